#!/usr/bin/env bash
# Builds lserve and runs every test: unit tests, whole-model logits vs HF transformers, the CLI's
# bad-input handling, tokenizer ids vs transformers.js, chat template prompts vs jinja2 and
# @huggingface/jinja, and a short fuzz of the parsers.
# GPU tests (later milestones) skip cleanly on a machine without one.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLSERVE_TESTS=ON -DLSERVE_BENCH=ON
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"

# Fuzz the file parsers briefly (libFuzzer + ASan, clang); FUZZ_SECONDS=600 for a long run.
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
