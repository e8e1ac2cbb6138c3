// `lserve serve` driven by the official OpenAI client (and plain fetch where a client would
// refuse to send something broken). Run through run.sh, which passes the binary in LSERVE.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import OpenAI from "openai";
import { Template } from "@huggingface/jinja";
import { readFileSync } from "node:fs";

const LSERVE = process.env.LSERVE;
const MODEL = "lserve-tiny-16k";  // the bundled default model (the folder name)
const MODEL_DIR = new URL("../../models/lserve-tiny-16k/", import.meta.url);

// Starts a server on a free port and resolves once it serves the model.
function startServer(extraArgs = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn(LSERVE, ["serve", "--port", "0", "--threads", "2", ...extraArgs], { stdio: ["ignore", "pipe", "pipe"] });
    let log = "";
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error("server did not start:\n" + log));
    }, 60000);
    const onLog = (chunk) => {
      log += chunk;
      const m = log.match(/serving '.*' \(.*\) on (http:\/\/[\d.]+:\d+)/);
      if (m && !proc.url) {
        proc.url = m[1];
        clearTimeout(timer);
        resolve(proc);
      }
    };
    proc.stdout.on("data", onLog);
    proc.stderr.on("data", onLog);
    proc.on("exit", (code) => {
      proc.exitCode_ = code;
      if (!proc.url) reject(new Error(`server exited with ${code}:\n${log}`));
    });
    proc.log = () => log;
  });
}

function stopServer(proc) {
  return new Promise((resolve) => {
    if (!proc) return resolve(null);
    if (proc.exitCode !== null) return resolve(proc.exitCode);
    proc.on("exit", (code) => resolve(code));
    proc.kill("SIGTERM");
  });
}

async function metrics(url) {
  const text = await (await fetch(url + "/metrics")).text();
  const value = (name, labels = "") => {
    const line = text.split("\n").find((l) => l.startsWith(name + "{") && l.includes(labels));
    return line === undefined ? undefined : Number(line.split(" ").pop());
  };
  return { text, value };
}

// Waits until no request holds KV pages (engine steps run asynchronously after a client ends).
async function waitIdle(url) {
  for (let i = 0; i < 200; i++) {
    const m = await metrics(url);
    const used = m.value("lserve_kv_pages_used", 'pool="retrieval"') + m.value("lserve_kv_pages_used", 'pool="streaming"');
    if (m.value("lserve_requests_running") === 0 && m.value("lserve_requests_waiting") === 0 && used === 0) return m;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail("the server did not return to idle with every page free");
}

let server, client;
before(async () => {
  server = await startServer(["--max-context", "4096"]);
  client = new OpenAI({ baseURL: server.url + "/v1", apiKey: "unused", maxRetries: 0 });
});
after(async () => {
  assert.equal(await stopServer(server), 0, "graceful exit on SIGTERM");
});

test("health, models, tokenize and detokenize", async () => {
  const health = await fetch(server.url + "/health");
  assert.equal(health.status, 200);
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [MODEL]);
  assert.equal((await client.models.retrieve(MODEL)).id, MODEL);
  const tok = await (await fetch(server.url + "/tokenize", { method: "POST", body: JSON.stringify({ prompt: "Hello world", add_special_tokens: false }) })).json();
  assert.ok(tok.count > 0 && tok.tokens.length === tok.count);
  const detok = await (await fetch(server.url + "/detokenize", { method: "POST", body: JSON.stringify({ tokens: tok.tokens }) })).json();
  assert.equal(detok.prompt, "Hello world");
});

test("completion: greedy is deterministic, usage adds up, stop strings end it", async () => {
  const params = { model: MODEL, prompt: "The license grants you the right to", max_tokens: 16, temperature: 0, ignore_eos: true };
  const a = await client.completions.create(params);
  const b = await client.completions.create(params);
  assert.equal(a.object, "text_completion");
  assert.equal(a.choices[0].text, b.choices[0].text);
  assert.equal(a.choices[0].finish_reason, "length");
  assert.equal(a.usage.completion_tokens, 16);
  assert.equal(a.usage.total_tokens, a.usage.prompt_tokens + 16);
  const text = a.choices[0].text;
  const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 2);
  const stopped = await client.completions.create({ ...params, stop: [stop] });
  assert.equal(stopped.choices[0].finish_reason, "stop");
  assert.equal(stopped.choices[0].text, text.slice(0, text.indexOf(stop)));
});

test("completion: streaming gives the same text, then usage, then [DONE]", async () => {
  const params = { model: MODEL, prompt: "Permission is hereby granted", max_tokens: 20, temperature: 0, ignore_eos: true };
  const whole = await client.completions.create(params);
  const stream = await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  let text = "", usage = null, finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, whole.choices[0].text);
  assert.equal(finish, "length");
  assert.deepEqual(usage, whole.usage);
});

test("completion: n choices, seeds, logprobs, echo, token-id prompts", async () => {
  const r = await client.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 8, n: 3, temperature: 1.0, seed: 7, logprobs: 2, ignore_eos: true });
  assert.equal(r.choices.length, 3);
  const again = await client.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 8, n: 3, temperature: 1.0, seed: 7, logprobs: 2, ignore_eos: true });
  assert.deepEqual(r.choices.map((c) => c.text), again.choices.map((c) => c.text), "a seed makes sampling repeatable");
  for (const c of r.choices) {
    assert.equal(c.logprobs.tokens.length, 8);
    assert.equal(c.logprobs.tokens.join(""), c.text);
    for (const lp of c.logprobs.token_logprobs) assert.ok(lp <= 0);
    for (const top of c.logprobs.top_logprobs) assert.equal(Object.keys(top).length <= 2, true);
  }
  const echo = await client.completions.create({ model: MODEL, prompt: "Echo me", max_tokens: 4, temperature: 0, echo: true });
  assert.ok(echo.choices[0].text.startsWith("Echo me"));
  const ids = await client.completions.create({ model: MODEL, prompt: [[1, 2, 3, 4], [5, 6, 7]], max_tokens: 4, temperature: 0 });
  assert.equal(ids.choices.length, 2);
  assert.equal(ids.usage.prompt_tokens, 7);
});

// The prompt a chat request must become: the model's own template rendered by @huggingface/jinja.
function renderChat(messages) {
  const cfg = JSON.parse(readFileSync(new URL("tokenizer_config.json", MODEL_DIR), "utf8"));
  return new Template(cfg.chat_template).render({ messages, add_generation_prompt: true, bos_token: cfg.bos_token, eos_token: cfg.eos_token });
}

test("chat: the model's template makes the prompt; streaming and usage agree", async () => {
  const messages = [
    { role: "system", content: "Answer briefly." },
    { role: "user", content: "The pass key is 4817263. Remember it. What is the pass key?" },
  ];
  const tokenize = async (body) => (await (await fetch(server.url + "/tokenize", { method: "POST", body: JSON.stringify(body) })).json()).tokens;
  const expected = await tokenize({ prompt: renderChat(messages), add_special_tokens: false });
  assert.deepEqual(await tokenize({ messages }), expected, "the server renders the template as @huggingface/jinja does");

  const params = { model: MODEL, messages, max_tokens: 12, temperature: 0 };
  const chat = await client.chat.completions.create(params);
  assert.equal(chat.object, "chat.completion");
  assert.equal(chat.choices[0].message.role, "assistant");
  assert.equal(chat.usage.prompt_tokens, expected.length);
  // The same tokens as a plain completion of the rendered prompt.
  const plain = await client.completions.create({ model: MODEL, prompt: expected, max_tokens: 12, temperature: 0 });
  assert.equal(chat.choices[0].message.content, plain.choices[0].text);
  assert.equal(chat.choices[0].finish_reason, plain.choices[0].finish_reason);

  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  let content = "", role = null, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      content += c.delta.content ?? "";
    }
  }
  assert.equal(role, "assistant");
  assert.equal(content, chat.choices[0].message.content);
  assert.deepEqual(usage, chat.usage);
});

test("bad requests get OpenAI-style 400s and lose nothing", async () => {
  const expect400 = async (params, param) => {
    await assert.rejects(client.completions.create({ model: MODEL, prompt: "hi", max_tokens: 4, ...params }), (e) => {
      assert.equal(e.status, 400, JSON.stringify(e.error));
      assert.ok(e.error.message.length > 0);
      if (param) assert.equal(e.error.param, param);
      return true;
    });
  };
  // An unknown model is a 404, as OpenAI answers it.
  await assert.rejects(client.completions.create({ model: "no-such-model", prompt: "hi", max_tokens: 4 }), (e) => {
    assert.equal(e.status, 404, JSON.stringify(e.error));
    assert.equal(e.error.code, "model_not_found");
    assert.equal(e.error.param, "model");
    return true;
  });
  await expect400({ max_tokens: 0 }, "max_tokens");
  await expect400({ max_tokens: -5 }, "max_tokens");
  await expect400({ temperature: "hot" }, "temperature");
  await expect400({ top_p: 3 }, "top_p");
  await expect400({ not_a_field: 1 }, "not_a_field");
  await expect400({ stop: 42 }, "stop");
  await expect400({ prompt: Array(5000).fill(17) });  // longer than --max-context 4096
  await assert.rejects(client.completions.create({ model: MODEL, prompt: Array(5000).fill(17), max_tokens: 4 }), (e) => e.error.code === "context_length_exceeded");
  await assert.rejects(client.chat.completions.create({ model: MODEL }), (e) => e.status === 400 && e.error.param === "messages");
  await assert.rejects(client.chat.completions.create({ model: MODEL, messages: [] }), (e) => e.status === 400);
  await assert.rejects(client.chat.completions.create({ model: MODEL, messages: [{ role: "wizard", content: "x" }] }), (e) => e.status === 400);

  const post = (path, body, headers = {}) => fetch(server.url + path, { method: "POST", body, headers: { "Content-Type": "application/json", ...headers } });
  for (const body of ["{not json", "[1, 2]", "", Buffer.from([0x7b, 0x22, 0x70, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]),
                      `{"model": "${MODEL}", "prompt": "hi", "temperature": 1e999}`]) {
    const res = await post("/v1/completions", body);
    assert.equal(res.status, 400, String(body));
    const err = (await res.json()).error;
    assert.equal(err.type, "invalid_request_error");
  }
  // 2^63 is past every integer field's range, and said so as written (not wrapped to -2^63).
  const huge = await post("/v1/completions", `{"model": "${MODEL}", "prompt": "hi", "max_tokens": 9223372036854775808}`);
  assert.equal(huge.status, 400);
  assert.ok((await huge.json()).error.message.includes("got 9223372036854775808"));
  const missing = await fetch(server.url + "/v1/nothing");
  assert.equal(missing.status, 404);
  assert.ok((await missing.json()).error.message.includes("/v1/nothing"));
  await waitIdle(server.url);
});

test("64 concurrent streaming requests each equal the same request run alone, and free every page", async () => {
  const prompts = Array.from({ length: 64 }, (_, i) => `Request ${i}: ` + "the quick brown fox jumps over the lazy dog ".repeat(1 + (i % 9)) + `and then ${i * 7}`);
  const params = (prompt) => ({ model: MODEL, prompt, max_tokens: 24, temperature: 0, ignore_eos: true });
  const alone = [];
  for (const p of prompts) alone.push((await client.completions.create(params(p))).choices[0].text);
  const before = await metrics(server.url);
  const streamed = await Promise.all(prompts.map(async (p) => {
    const stream = await client.completions.create({ ...params(p), stream: true });
    let text = "";
    for await (const chunk of stream) for (const c of chunk.choices) text += c.text;
    return text;
  }));
  for (let i = 0; i < prompts.length; i++) assert.equal(streamed[i], alone[i], `request ${i}`);
  const m = await waitIdle(server.url);
  assert.equal(m.value("lserve_requests_finished_total", 'finished_reason="error"'), 0);
  assert.ok(m.value("lserve_engine_steps_total") > before.value("lserve_engine_steps_total"));
});

test("a client that disconnects mid-stream aborts its request and frees its pages", async () => {
  const before = (await metrics(server.url)).value("lserve_requests_finished_total", 'finished_reason="abort"');
  const stream = await client.completions.create({ model: MODEL, prompt: "Keep talking", max_tokens: 3000, temperature: 0, ignore_eos: true, stream: true });
  let chunks = 0;
  for await (const chunk of stream) {
    if (++chunks === 5) break;  // leaving the loop aborts the HTTP request
  }
  const m = await waitIdle(server.url);
  assert.equal(m.value("lserve_requests_finished_total", 'finished_reason="abort"'), before + 1);
});

test("a client that gives up on a non-streaming request aborts it and frees its pages", async () => {
  const before = (await metrics(server.url)).value("lserve_requests_finished_total", 'finished_reason="abort"');
  const controller = new AbortController();
  const pending = client.completions.create(
    { model: MODEL, prompt: "Keep talking", max_tokens: 3000, temperature: 0, ignore_eos: true },
    { signal: controller.signal });
  // Abort once the request runs (it holds pages), long before its 3000 tokens are done.
  for (let i = 0; i < 200; i++) {
    if ((await metrics(server.url)).value("lserve_requests_running") === 1) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  controller.abort();
  await assert.rejects(pending);
  const m = await waitIdle(server.url);
  assert.equal(m.value("lserve_requests_finished_total", 'finished_reason="abort"'), before + 1);
});

test("serve --attention lserve starts at the model's full context with the default KV pool", async () => {
  // The default 1 GiB, most of it the streaming windows of 64 sequences, is short of one
  // 32K-token sequence: the server grows the pool rather than refusing to start.
  const sparse = await startServer(["--attention", "lserve"]);
  try {
    assert.match(sparse.log(), /to hold one sequence of the max context \(32768 tokens\)/);
    const c = new OpenAI({ baseURL: sparse.url + "/v1", apiKey: "unused", maxRetries: 0 });
    const r = await c.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 8, ignore_eos: true });
    assert.equal(r.usage.completion_tokens, 8);
    await waitIdle(sparse.url);
  } finally {
    await stopServer(sparse);
  }
});

test("sparse attention per request: LServe's knobs over the server's, refused where the cache cannot run them", async () => {
  const sparse = await startServer(["--attention", "lserve", "--token-budget", "256", "--page-size", "16", "--max-context", "4096"]);
  try {
    const c = new OpenAI({ baseURL: sparse.url + "/v1", apiKey: "unused", maxRetries: 0 });
    const prompt = Array.from({ length: 1500 }, (_, i) => 100 + ((i * 37) % 5000));
    const params = { model: MODEL, prompt, max_tokens: 24, temperature: 0, ignore_eos: true };
    const base = await c.completions.create(params);
    const again = await c.completions.create({ ...params, sparse_attention: {} });
    assert.equal(again.choices[0].text, base.choices[0].text, "an empty override is the server's policy");
    for (const sparse_attention of [{ policy: "streaming" }, { token_budget: 64, selector_interval: 1 }, { policy: "lserve", token_budget: 1024 }]) {
      const r = await c.completions.create({ ...params, sparse_attention });
      assert.equal(r.usage.completion_tokens, 24, JSON.stringify(sparse_attention));
    }
    const refused = async (sparse_attention) =>
      assert.rejects(c.completions.create({ ...params, sparse_attention }), (e) => {
        assert.equal(e.status, 400, JSON.stringify(sparse_attention));
        assert.equal(e.error.param, "sparse_attention");
        return true;
      });
    await refused({ policy: "dense" });          // the streaming heads' KV is gone
    await refused({ policy: "quest" });          // no streaming heads: another cache
    await refused({ token_budget: 100 });        // not a multiple of the 16-token page
    await refused({ local: 512 });               // windows are the server's
    await refused("lserve");
    await waitIdle(sparse.url);
  } finally {
    await stopServer(sparse);
  }
  // A dense server has no page summaries: selection is refused, dense is what it runs anyway.
  await assert.rejects(client.completions.create({ model: MODEL, prompt: "hi", max_tokens: 2, sparse_attention: { policy: "quest" } }),
    (e) => e.status === 400 && e.error.param === "sparse_attention");
  const dense = await client.completions.create({ model: MODEL, prompt: "hi", max_tokens: 2, sparse_attention: { policy: "dense" } });
  assert.equal(dense.choices.length, 1);
});

test("an API key is required when set", async () => {
  const secured = await startServer(["--api-key", "sesame", "--max-context", "1024"]);
  try {
    const wrong = new OpenAI({ baseURL: secured.url + "/v1", apiKey: "wrong", maxRetries: 0 });
    await assert.rejects(wrong.models.list(), (e) => e.status === 401 && e.error.code === "invalid_api_key");
    const none = await fetch(secured.url + "/v1/models");
    assert.equal(none.status, 401);
    const right = new OpenAI({ baseURL: secured.url + "/v1", apiKey: "sesame", maxRetries: 0 });
    const r = await right.completions.create({ model: MODEL, prompt: "hi", max_tokens: 2 });
    assert.equal(r.choices.length, 1);
    assert.equal((await fetch(secured.url + "/health")).status, 200, "health needs no key");
  } finally {
    await stopServer(secured);
  }
});

test("SIGTERM lets the requests in flight finish, then the server exits cleanly", async () => {
  const s = await startServer(["--max-context", "2048"]);
  const c = new OpenAI({ baseURL: s.url + "/v1", apiKey: "x", maxRetries: 0 });
  const stream = await c.completions.create({ model: MODEL, prompt: "Drain me", max_tokens: 300, temperature: 0, ignore_eos: true, stream: true });
  let finish = null, chunks = 0;
  const exited = new Promise((resolve) => s.on("exit", resolve));
  for await (const chunk of stream) {
    if (++chunks === 2) s.kill("SIGTERM");
    for (const ch of chunk.choices) if (ch.finish_reason) finish = ch.finish_reason;
  }
  assert.equal(finish, "length", "the stream ran to its end");
  assert.equal(await exited, 0);
});
