#!/usr/bin/env bash
# Builds lserve and runs the main job on the bundled default model (models/lserve-tiny-16k): a
# pass key hidden in the middle of ~12K tokens of held-out English text, retrieved with LServe's
# sparse attention (half the KV heads streaming, page selection for the rest). Prints the
# answer, the prefill and decode speed, the KV each head read per step and the peak memory.
# Extra arguments go to `lserve generate` (e.g. --attention dense to compare).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target lserve

prompt=$(mktemp)
trap 'rm -f "$prompt"' EXIT
key=$(( (RANDOM * 32768 + RANDOM) % 9000000 + 1000000 ))
awk -v key="$key" 'NR >= 2000 && NR < 2520 { printf "%s ", $0 } NR == 2260 { printf "The pass key is %s. Remember it. ", key }' \
  eval/haystack.txt > "$prompt"
printf '\n\nWhat is the pass key? Answer:' >> "$prompt"
echo "hidden pass key: $key"
./build/lserve generate --prompt-file "$prompt" --max-tokens 16 --temperature 0 --attention lserve --token-budget 1024 "$@"
