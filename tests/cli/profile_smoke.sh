#!/usr/bin/env bash
# Black-box: `lserve profile-heads` on the trained tiny model. A short profile (two tasks, one
# sample each, 1K tokens) must write a pattern file that lserve loads back: one score per KV head
# in [0, 1], the largest exactly 1, `streaming_ratio 0.5`, and its comments saying what was
# measured. The model's two strongest retrieval heads (layer 0 head 0 and layer 7 head 2: the
# answers lose tens of nats when either streams, every other head under 5) must score highest.
# --random writes a pattern of the same shape; bad flags end in a one-line error.
# Usage: profile_smoke.sh path/to/lserve
source "$(dirname "$0")/lib.sh" "$@"

# scores FILE: the pattern's score rows, one line per layer.
scores() { grep -vE '^(#|streaming_ratio|$)' "$1"; }

if "$lserve" profile-heads --model "$model" --task passkey,vartrack --samples 1 --length 1024 --out "$tmp/p.txt" \
    >"$tmp/out.txt" 2>"$tmp/err.txt"; then
  grep -q "16 of 32 KV heads stream" "$tmp/out.txt" || fail "summary line: $(tail -1 "$tmp/out.txt")"
  grep -q "^streaming_ratio 0.5" "$tmp/p.txt" || fail "no streaming_ratio rule in the file"
  grep -q "passkey,vartrack at 1024 tokens" "$tmp/p.txt" || fail "comments do not say what was profiled"
  scores "$tmp/p.txt" | python3 -c '
import sys
rows = [[float(x) for x in line.split()] for line in sys.stdin if line.strip()]
assert len(rows) == 8 and all(len(r) == 4 for r in rows), [len(r) for r in rows]
flat = sorted(((v, (l, h)) for l, r in enumerate(rows) for h, v in enumerate(r)), reverse=True)
assert all(0.0 <= v <= 1.0 for v, _ in flat), flat
assert flat[0][0] == 1.0, flat[0]
top = {flat[0][1], flat[1][1]}
assert top == {(0, 0), (7, 2)}, f"strongest heads {flat[:3]}"
print("profile: strongest heads", sorted(top))
' || fail "pattern scores"
  # lserve reads the file back as a head pattern.
  "$lserve" eval --model "$model" --head-pattern "$tmp/p.txt" --attention streaming --task passkey --lengths 1024 \
    --depths 0.5 --samples 1 >/dev/null 2>"$tmp/eval.txt" || fail "eval with the written pattern: $(tail -2 "$tmp/eval.txt")"
else
  fail "profile-heads exited $?: $(tail -3 "$tmp/err.txt")"
fi

"$lserve" profile-heads --model "$model" --random 3 --out "$tmp/r.txt" >/dev/null 2>&1 || fail "--random exited $?"
[ "$(scores "$tmp/r.txt" | wc -l)" -eq 8 ] || fail "--random: $(scores "$tmp/r.txt" | wc -l) score rows"

err=$("$lserve" profile-heads --model "$model" --task nosuchtask 2>&1 >/dev/null); rc=$?
msg=$(printf '%s\n' "$err" | grep -v '^\[')
[ "$rc" -eq 1 ] && [ "$(printf '%s\n' "$msg" | grep -c .)" -eq 1 ] || fail "bad --task: exit $rc: $err"

[ "$failed" -eq 0 ] && echo "profile smoke: ok"
exit $((failed > 0))
