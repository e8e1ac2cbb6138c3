#!/usr/bin/env bash
# Black-box: every kind of bad input to `lserve` gives a one-line error naming the file and the
# problem, a non-zero exit (1, not a signal), and no crash. Usage: bad_input.sh path/to/lserve
set -uo pipefail
lserve=$1
here=$(cd "$(dirname "$0")/../.." && pwd)
good=$here/tests/fixtures/models/llama3
tok=$here/models/tiny-llama
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0; failed=0

# expect NAME PATTERN -- command...: exit 1, one line on stderr, matching PATTERN.
expect() {
  local name=$1 pattern=$2; shift 3
  local err rc
  err=$("$@" 2>&1 >/dev/null); rc=$?
  local lines; lines=$(printf '%s\n' "$err" | grep -v '^\[' | grep -c .)  # log lines start with [
  local msg; msg=$(printf '%s\n' "$err" | grep -v '^\[' | head -1)
  if [ "$rc" -eq 1 ] && [ "$lines" -eq 1 ] && printf '%s' "$msg" | grep -qE "$pattern"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL $name: exit $rc, $lines error lines: $err"
  fi
}

# A model folder: copy of a good fixture, then broken in one way.
model() { rm -rf "$tmp/$1"; cp -r "$good" "$tmp/$1"; echo "$tmp/$1"; }
gen() { "$lserve" generate --model "$1" --prompt hi --max-tokens 2 --no-bos; }

expect missing-folder "nope.*not found" -- gen "$tmp/nope"
m=$(model noconfig); rm "$m/config.json"
expect missing-config "config.json.*cannot open" -- gen "$m"
m=$(model badjson); echo '{"architectures": [' > "$m/config.json"
expect config-not-json "config.json: not valid JSON" -- gen "$m"
m=$(model arch); python3 - "$m/config.json" <<'PY'
import json, sys; p = sys.argv[1]; c = json.load(open(p)); c["architectures"] = ["GPT2LMHeadModel"]; json.dump(c, open(p, "w"))
PY
expect unknown-architecture "unsupported architecture 'GPT2LMHeadModel'" -- gen "$m"
m=$(model shape); python3 - "$m/config.json" <<'PY'
import json, sys; p = sys.argv[1]; c = json.load(open(p)); c["intermediate_size"] += 8; json.dump(c, open(p, "w"))
PY
expect wrong-shape "model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' has shape" -- gen "$m"
m=$(model header); python3 - "$m/model.safetensors" <<'PY'
import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[8] = ord("x"); open(p, "wb").write(b)
PY
expect header-not-json "model.safetensors: safetensors header is not valid JSON" -- gen "$m"
m=$(model truncated); python3 - "$m/model.safetensors" <<'PY'
import sys; p = sys.argv[1]; b = open(p, "rb").read(); open(p, "wb").write(b[: len(b) // 2])
PY
expect offsets-past-end "model.safetensors: tensor .* lies outside" -- gen "$m"
m=$(model dtype); python3 - "$m/model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]; b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8 : 8 + n])
h["model.norm.weight"]["dtype"] = "I32"  # same byte size as F32, wrong kind
hb = json.dumps(h).encode(); open(p, "wb").write(struct.pack("<Q", len(hb)) + hb + b[8 + n :])
PY
expect wrong-dtype "tensor 'model.norm.weight' has dtype I32" -- gen "$m"
m=$(model notok)
expect no-tokenizer "no tokenizer.json" -- gen "$m"
cp "$tok/tokenizer.json" "$m/"; echo "garbage{" > "$m/tokenizer.json"
expect bad-tokenizer "tokenizer.json" -- gen "$m"
expect missing-prompt-file "nothere.txt: cannot open" -- "$lserve" generate --model "$tok" --prompt-file "$tmp/nothere.txt"
expect prompt-too-long "exceeds the max context" -- "$lserve" generate --model "$tok" --prompt "hello world" --max-context 4 --max-tokens 8
expect bad-sampling "top_p must be in" -- "$lserve" generate --model "$tok" --prompt hi --top-p 0
expect tokenize-missing "cannot open|not found|tokenizer.json" -- "$lserve" tokenize --tokenizer "$tmp/nothing"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
