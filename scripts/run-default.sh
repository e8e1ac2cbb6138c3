#!/usr/bin/env bash
# Builds lserve and runs the main job on the bundled default model: a generate over a long
# prompt, printing the answer, the prefill and decode speed and the peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target lserve

# A long prompt: a few thousand tokens of license text (every Debian system ships it), then a question.
prompt=$(mktemp)
trap 'rm -f "$prompt"' EXIT
cat /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 > "$prompt"
printf '\n\nQuestion: which license is quoted first above? Answer:' >> "$prompt"
./build/lserve generate --prompt-file "$prompt" --max-tokens 64 "$@"
