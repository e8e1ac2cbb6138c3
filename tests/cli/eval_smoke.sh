#!/usr/bin/env bash
# Black-box: `lserve eval` on the trained tiny model. A short passkey run must report JSON that
# parses, counts every sample and finds at least half of the pass keys; the table and the PNG
# must come out; bad flags end in a one-line error; and the samples it builds must be identical
# to python/eval_tasks.py's (prompt text, answer, slots), token counts from `lserve tokenize`.
# Usage: eval_smoke.sh path/to/lserve
source "$(dirname "$0")/lib.sh" "$@"

# 1. JSON: passkey at 1K tokens, 2 samples at each of the default 11 depths.
if "$lserve" eval --model "$model" --task passkey --lengths 1024 --samples 2 --json --png "$tmp/grid.png" \
    >"$tmp/out.json" 2>"$tmp/err.txt"; then
  python3 - "$tmp/out.json" "$tmp/grid.png" <<'PY' || fail "json/png checks"
import json, struct, sys
r = json.load(open(sys.argv[1]))
assert r["total"] == 22 and len(r["cells"]) == 11, (r["total"], len(r["cells"]))
assert r["attention"]["policy"] == "dense"
p = r["tasks"]["passkey"]["lengths"]["1024"]
assert sum(c["total"] for c in r["cells"]) == p["total"] == 22
assert r["accuracy"] >= 0.5, f"passkey accuracy {r['accuracy']} < 0.5"
png = open(sys.argv[2], "rb").read()
assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
w, h = struct.unpack(">II", png[16:24])
assert w > 100 and h > 100, (w, h)
print(f"passkey 1K: {r['correct']}/{r['total']} correct in {r['seconds']:.1f} s; PNG {w}x{h}")
PY
else
  fail "eval --json exited $?: $(tail -3 "$tmp/err.txt")"
fi
# The default policy is auto, which stays dense on the CPU and says so.
grep -q -- "--attention auto: dense (not on the GPU)" "$tmp/err.txt" || fail "no auto-policy line in: $(grep -m2 attention "$tmp/err.txt")"

# 2. The table.
out=$("$lserve" eval --model "$model" --task niah --lengths 1K --depths 0.5 --samples 1 2>/dev/null)
printf '%s\n' "$out" | grep -qE '^niah +1024 ' || fail "table: no niah 1024 row in: $out"

# 3. Bad flags and prompts beyond the context: exit 1 and one error line.
expect_error() {
  local pattern=$1; shift
  local err rc
  err=$("$lserve" eval --model "$model" "$@" 2>&1 >/dev/null); rc=$?
  local msg; msg=$(printf '%s\n' "$err" | grep -v '^\[')
  if [ "$rc" -ne 1 ] || [ "$(printf '%s\n' "$msg" | grep -c .)" -ne 1 ] || ! printf '%s' "$msg" | grep -qE "$pattern"; then
    fail "eval $*: exit $rc: $err"
  fi
}
expect_error "lserve: error: --task: unknown task 'bogus'" --task bogus
expect_error "lserve: error: --lengths: 'x12' is not" --lengths x12
expect_error "lserve: error: --depths: 1.5 is not a fraction" --depths 0.5,1.5
expect_error "lserve: error: --lengths 40000: .*exceeds the max context of 32768" --lengths 40000
expect_error "lserve: error: .*nope.txt" --haystack "$tmp/nope.txt"

# 4. The samples against the Python reference: every task at three depths.
if "$lserve" eval --model "$model" --task all --lengths 1024,2500 --depths 0,0.5,1 --samples 1 --seed 3 \
    --write-samples "$tmp/samples.jsonl" 2>"$tmp/err.txt"; then
  python3 "$here/tests/cli/eval_prompts_vs_python.py" "$lserve" "$model" "$tmp/samples.jsonl" 3 || fail "samples differ from python/eval_tasks.py"
else
  fail "eval --write-samples: $(tail -3 "$tmp/err.txt")"
fi

[ "$failed" -eq 0 ] && echo "eval smoke: all checks passed"
exit $((failed > 0))
