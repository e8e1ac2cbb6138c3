#!/usr/bin/env bash
# Black-box: `lserve bench` on a tiny dummy-weight config, one sequence and a batch: the table,
# JSON and the CSV rows the GPU driver (bench/cuda/e2e.sh) collects; bad flags end in a one-line
# error. Usage: bench_smoke.sh path/to/lserve
set -uo pipefail
lserve=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() { echo "FAIL $*"; failed=$((failed + 1)); }

cat >"$tmp/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512, "hidden_size": 64,
 "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "max_position_embeddings": 1024, "torch_dtype": "bfloat16"}
JSON
bench() { "$lserve" bench --model "$tmp/config.json" --load-format dummy --threads 2 "$@"; }

# One sequence: the table as before, and CSV rows.
bench --prompt-tokens 64 --prompt-tokens 128 --decode-tokens 5 --repeats 1 --csv "$tmp/rows.csv" \
  >"$tmp/b1.txt" 2>"$tmp/err.txt" || fail "batch 1: $(tail -1 "$tmp/err.txt")"
grep -qE "^prompt +decode +prefill tok/s +decode tok/s +ms/token" "$tmp/b1.txt" || fail "batch 1 header: $(cat "$tmp/b1.txt")"
[ "$(grep -cE '^(64|128) ' "$tmp/b1.txt")" -eq 2 ] || fail "batch 1 rows: $(cat "$tmp/b1.txt")"
# A batch through the engine, appended to the same CSV; JSON on stdout.
bench --batch 3 --prompt-tokens 100 --decode-tokens 6 --repeats 2 --json --csv "$tmp/rows.csv" \
  >"$tmp/b3.json" 2>"$tmp/err.txt" || fail "batch 3: $(tail -1 "$tmp/err.txt")"
python3 - "$tmp/b3.json" "$tmp/rows.csv" <<'PY' || fail "json/csv checks"
import csv, json, sys
# log lines (on stdout too) start with [
r = json.loads(next(line for line in open(sys.argv[1]) if line.startswith("{")))
assert r["batch"] == 3 and r["prompt_tokens"] == 100, r
assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 and r["decode_ms_per_step"] > 0, r
rows = list(csv.DictReader(open(sys.argv[2])))
assert list(rows[0].keys()) == ["system", "case", "context", "batch", "value", "unit"], rows[0].keys()
got = {(x["case"], int(x["context"]), int(x["batch"])) for x in rows}
for n, b in ((64, 1), (128, 1), (100, 3)):
    for case in ("prefill", "prefill_time", "decode", "decode_step"):
        assert (case, n, b) in got, (case, n, b, got)
assert all(x["system"] == "lserve" and float(x["value"]) > 0 for x in rows)
# decode tokens/s of the batch = batch x 1000 / ms per step
d = {x["case"]: float(x["value"]) for x in rows if x["batch"] == "3"}
assert abs(d["decode"] - 3000 / d["decode_step"]) < 1e-3 * d["decode"], d
PY

# Overlapped steps are the default; both spellings parse, and on the CPU (which draws no token on
# a device) either way runs the plain loop: the same decode steps.
for flag in --overlap-steps --no-overlap-steps; do
  bench --batch 2 --prompt-tokens 32 --decode-tokens 4 --repeats 1 --json "$flag" >"$tmp/o$flag.json" 2>"$tmp/err.txt" ||
    fail "$flag: $(tail -1 "$tmp/err.txt")"
done
python3 - "$tmp/o--overlap-steps.json" "$tmp/o--no-overlap-steps.json" <<'PY' || fail "overlap flags"
import json, sys
on, off = (json.loads(next(l for l in open(f) if l.startswith("{"))) for f in sys.argv[1:])
assert on["decode_tokens"] == off["decode_tokens"] and on["batch"] == off["batch"] == 2, (on, off)
PY

# Bad flags and impossible runs: one line, exit 1 (ours) or CLI11's usage error.
expect_error() {  # pattern, args...
  local pattern=$1; shift
  bench "$@" >/dev/null 2>"$tmp/err.txt"
  local rc=$? err
  err=$(grep -v '^\[' "$tmp/err.txt" | head -1)
  if [ "$rc" -eq 0 ] || ! printf '%s' "$err" | grep -qE -- "$pattern"; then fail "$*: exit $rc: $err"; fi
}
expect_error "--batch: Value 0 not in range" --batch 0
expect_error "--warmup-tokens: Value 0 not in range" --warmup-tokens 0
expect_error "leaves no room to decode" --batch 2 --prompt-tokens 1024
expect_error "would pass the 1024-token context" --batch 2 --prompt-tokens 1000 --decode-tokens 64
expect_error "cannot open for writing" --prompt-tokens 8 --decode-tokens 2 --csv "$tmp/no/such/dir/x.csv"

[ "$failed" -eq 0 ] && echo "bench smoke: ok"
[ "$failed" -eq 0 ]
