#!/usr/bin/env node
// Checks `lserve chat-template` against two reference Jinja engines on real chat templates
// (tests/fixtures/chat_templates, see its manifest.json for where each came from, plus the bundled
// models/tiny-llama), each rendered with every conversation in cases.json:
//   - Python jinja2 in Hugging Face's apply_chat_template environment (render_jinja2.py): the
//     ground truth, since transformers renders with it;
//   - @huggingface/jinja, the JavaScript engine of transformers.js and the Hub. It departs from
//     jinja2 in places (it prints a JSON 22.0 as 22, for one); where the two references disagree,
//     lserve must match jinja2, and the case is reported, not failed.
// A pair (template, conversation) passes when lserve gives exactly the reference's text, or when
// both fail: with the same message if the template called raise_exception, any error otherwise.
// Without jinja2 (python3-jinja2 not installed), @huggingface/jinja is the reference, except on the
// renders listed in hf_jinja_departures.json (where it is known to depart from jinja2), which are
// skipped. --record-departures rewrites that list from a run with jinja2.
//
// Usage: node compare.mjs PATH/TO/lserve [--only SUBSTRING] [--show N] [--record-departures]
// Ends with "N passed, M failed"; exits 1 on any failure.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Template } from '@huggingface/jinja';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const fixtures = path.join(root, 'tests/fixtures/chat_templates');

const args = process.argv.slice(2);
const lserve = args[0];
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : null;
const show = args.includes('--show') ? Number(args[args.indexOf('--show') + 1]) : 12;
const recordDepartures = args.includes('--record-departures');
const departuresFile = path.join(here, 'hf_jinja_departures.json');
if (!lserve || !fs.existsSync(lserve)) {
  console.error('usage: node compare.mjs PATH/TO/lserve [--only SUBSTRING] [--show N]');
  process.exit(2);
}

// strftime_now() shows this time in all three engines (Llama 3.x templates print today's date).
const NOW = '2024-07-26 12:00:00';

// --- Templates and conversations -------------------------------------------------------------

function loadTemplates() {
  const manifest = JSON.parse(fs.readFileSync(path.join(fixtures, 'manifest.json'), 'utf8'));
  const templates = manifest.map((m) => ({
    name: m.file.replace(/\.jinja$/, ''),
    source: fs.readFileSync(path.join(fixtures, m.file), 'utf8'),
    tokens: Object.fromEntries([['bos_token', m.bos_token], ['eos_token', m.eos_token]].filter(([, v]) => v !== null)),
  }));
  // The bundled default model, through its tokenizer_config.json.
  const tiny = path.join(root, 'models/tiny-llama');
  const config = JSON.parse(fs.readFileSync(path.join(tiny, 'tokenizer_config.json'), 'utf8'));
  const tokens = {};
  for (const k of ['bos_token', 'eos_token']) {
    const t = config[k];
    if (typeof t === 'string') tokens[k] = t;
    else if (t && typeof t.content === 'string') tokens[k] = t.content;
  }
  templates.push({ name: 'models/tiny-llama', source: config.chat_template, tokens, modelDir: tiny });
  return templates.filter((t) => !only || t.name.includes(only));
}

// The template variables, as apply_chat_template passes them: the special tokens, messages,
// tools=None, documents=None, add_generation_prompt=False, then the options (its **kwargs).
function variables(template, kase) {
  return { ...template.tokens, messages: kase.messages, tools: null, documents: null, add_generation_prompt: false, ...kase.options };
}

// --- The three engines -------------------------------------------------------------------------

function renderLserve(pairs) {
  const input = pairs.map(({ template, kase }) =>
    JSON.stringify({ template: template.source, special_tokens: template.tokens, messages: kase.messages, options: kase.options })).join('\n') + '\n';
  const r = spawnSync(lserve, ['chat-template', '--jsonl', '--now', NOW], { input, maxBuffer: 1 << 30 });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`lserve chat-template --jsonl exited ${r.status}: ${r.stderr.toString().trim()}`);
  const lines = r.stdout.toString('utf8').split('\n');
  lines.pop();
  if (lines.length !== pairs.length) throw new Error(`lserve gave ${lines.length} results for ${pairs.length} requests`);
  return lines.map((l) => JSON.parse(l));
}

function renderJinja2(pairs) {
  const input = JSON.stringify(pairs.map(({ template, kase }) => ({ template: template.source, variables: variables(template, kase) })));
  for (const python of ['python3', '/usr/bin/python3']) {
    const r = spawnSync(python, [path.join(here, 'render_jinja2.py'), NOW], { input, maxBuffer: 1 << 30 });
    if (r.error || r.status === 3) continue;  // no such python, or no jinja2 in it
    if (r.status !== 0) throw new Error(`render_jinja2.py exited ${r.status}: ${r.stderr.toString().trim()}`);
    const version = spawnSync(python, ['-c', 'import jinja2; print(jinja2.__version__)']).stdout.toString().trim();
    return { results: JSON.parse(r.stdout.toString('utf8')), version };
  }
  return null;
}

// @huggingface/jinja's strftime_now reads the clock itself: freeze Date at NOW (local time).
function freezeClock() {
  const RealDate = Date;
  const [date, time] = NOW.split(' ');
  const [y, m, d] = date.split('-').map(Number);
  const [H, M, S] = time.split(':').map(Number);
  const frozen = new RealDate(y, m - 1, d, H, M, S).getTime();
  globalThis.Date = class extends RealDate {
    constructor(...a) {
      if (a.length === 0) super(frozen);
      else super(...a);
    }
    static now() { return frozen; }
  };
}

function renderHuggingFaceJinja(pairs) {
  freezeClock();
  const compiled = new Map();
  return pairs.map(({ template, kase }) => {
    try {
      if (!compiled.has(template.source)) compiled.set(template.source, new Template(template.source));
      return { prompt: compiled.get(template.source).render(variables(template, kase)) };
    } catch (e) {
      return { error: String(e.message ?? e), raised: null };
    }
  });
}

// --- Comparing ------------------------------------------------------------------------------------

// JSON-quoted, cut to a window around `at`.
const snippet = (s, at, width = 70) => JSON.stringify(s.slice(Math.max(0, at - width / 2), at + width));

function firstDifference(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

function describe(r) {
  if (r.prompt !== undefined) return `text of ${r.prompt.length} chars`;
  return `${r.raised ? 'raise_exception' : 'error'}: ${r.error}`;
}

// lserve agrees with a reference result.
function agrees(ref, got, refRaisedKnown) {
  if (ref.prompt !== undefined) return got.prompt === ref.prompt;
  if (got.prompt !== undefined) return false;
  if (refRaisedKnown && ref.raised) return got.raised === true && got.error === ref.error;
  return true;
}

function explain(label, ref, refName, got) {
  const lines = [`  ${label}`];
  if (ref.prompt !== undefined && got.prompt !== undefined) {
    const i = firstDifference(ref.prompt, got.prompt);
    lines.push(`    texts differ at char ${i} (${refName}: ${ref.prompt.length} chars, lserve: ${got.prompt.length})`);
    lines.push(`    ${refName.padEnd(8)} ${snippet(ref.prompt, i)}`);
    lines.push(`    lserve   ${snippet(got.prompt, i)}`);
  } else {
    lines.push(`    ${refName}: ${describe(ref)}`);
    lines.push(`    lserve: ${describe(got)}`);
  }
  return lines.join('\n');
}

function main() {
  const templates = loadTemplates();
  const cases = JSON.parse(fs.readFileSync(path.join(here, 'cases.json'), 'utf8'));
  const pairs = [];
  for (const template of templates) for (const kase of cases) pairs.push({ template, kase });

  const ours = renderLserve(pairs);
  const hf = renderHuggingFaceJinja(pairs);
  const py = renderJinja2(pairs);
  if (py) console.log(`references: Python jinja2 ${py.version} (ground truth) and @huggingface/jinja`);
  else console.log('references: @huggingface/jinja only (Python jinja2 not found: install python3-jinja2 for the ground truth)');

  // Without jinja2: the renders where @huggingface/jinja is known to be wrong are not judged.
  const known = py ? new Set() : new Set(JSON.parse(fs.readFileSync(departuresFile, 'utf8')));
  let skipped = 0;
  let passed = 0;
  let matchHf = 0;
  let bothFailed = 0;
  const failures = [];
  const hfDepartures = new Map();  // template -> cases where @huggingface/jinja departs from jinja2
  pairs.forEach(({ template, kase }, i) => {
    const label = `${template.name} x "${kase.name}"`;
    const ref = py ? py.results[i] : hf[i];
    if (agrees(hf[i], ours[i], false) && (hf[i].prompt !== undefined) === (ours[i].prompt !== undefined)) matchHf++;
    if (py && !agrees(py.results[i], hf[i], false)) {
      if (!hfDepartures.has(template.name)) hfDepartures.set(template.name, []);
      hfDepartures.get(template.name).push({ kase: kase.name, py: py.results[i], hf: hf[i] });
    }
    if (!py && known.has(label)) {
      skipped++;
    } else if (agrees(ref, ours[i], Boolean(py))) {
      passed++;
      if (ref.prompt === undefined) bothFailed++;
    } else {
      failures.push(explain(label, ref, py ? 'jinja2' : 'hf-jinja', ours[i]));
    }
  });

  // The model folder path (tokenizer_config.json's template and tokens, found by the CLI) must give
  // what the same template rendered as text gives.
  const folderIndex = pairs.findIndex((p) => p.template.modelDir && p.kase.options.add_generation_prompt);
  if (folderIndex >= 0) {
    const { template, kase } = pairs[folderIndex];
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'chat-template-')), 'messages.json');
    fs.writeFileSync(file, JSON.stringify({ messages: kase.messages, ...kase.options }));
    const r = spawnSync(lserve, ['chat-template', '--model', template.modelDir, '--messages', file, '--now', NOW]);
    fs.rmSync(path.dirname(file), { recursive: true });
    const ref = py ? py.results[folderIndex] : hf[folderIndex];
    const got = r.status === 0 ? { prompt: r.stdout.toString('utf8') } : { error: r.stderr.toString().trim(), raised: false };
    if (agrees(ref, got, Boolean(py))) passed++;
    else failures.push(explain(`lserve chat-template --model ${template.name} x "${kase.name}"`, ref, py ? 'jinja2' : 'hf-jinja', got));
  }

  console.log(`${templates.length} templates x ${cases.length} conversations = ${pairs.length} renders, and one through --model`);
  console.log(`lserve identical to ${py ? 'jinja2' : '@huggingface/jinja'}: ${passed}` +
              ` (${passed - bothFailed} texts, ${bothFailed} where both reject the conversation)`);
  console.log(`lserve identical to @huggingface/jinja: ${matchHf}`);
  if (hfDepartures.size > 0) {
    let count = 0;
    for (const list of hfDepartures.values()) count += list.length;
    console.log(`\n@huggingface/jinja departs from jinja2 on ${count} renders (${hfDepartures.size} templates); lserve follows jinja2:`);
    for (const [name, list] of hfDepartures) {
      const d = list[0];
      let why;
      if (d.py.prompt !== undefined && d.hf.prompt !== undefined) {
        const at = firstDifference(d.py.prompt, d.hf.prompt);
        why = `jinja2 ${snippet(d.py.prompt, at, 40)} vs hf-jinja ${snippet(d.hf.prompt, at, 40)}`;
      } else {
        why = `jinja2: ${describe(d.py)}; hf-jinja: ${describe(d.hf)}`;
      }
      console.log(`  ${name}: ${list.length} case(s), e.g. "${d.kase}": ${why.slice(0, 300)}`);
    }
  }
  if (py && recordDepartures) {
    const labels = [];
    for (const [name, list] of hfDepartures) for (const d of list) labels.push(`${name} x "${d.kase}"`);
    fs.writeFileSync(departuresFile, JSON.stringify(labels, null, 1) + '\n');
    console.log(`recorded ${labels.length} departures in ${path.basename(departuresFile)}`);
  }
  if (failures.length > 0) {
    console.log(`\nlserve differs on ${failures.length} renders${failures.length > show ? ` (first ${show} shown)` : ''}:`);
    for (const f of failures.slice(0, show)) console.log(f);
  }
  const skipNote = skipped > 0 ? `, ${skipped} skipped` : '';
  console.log(`\nchat_template_compare: ${passed} passed, ${failures.length} failed${skipNote}`);
  process.exit(failures.length === 0 ? 0 : 1);
}

main();
