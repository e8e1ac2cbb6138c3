#!/usr/bin/env bash
# Builds lserve and runs every test: unit tests, whole-model logits vs HF transformers, the CLI's
# bad-input handling, tokenizer ids vs transformers.js, chat template prompts vs jinja2 and
# @huggingface/jinja, and a short fuzz of the parsers.
# With the CUDA toolkit present, the CUDA backend is compiled too and its tests (which need a
# GPU) skip cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLSERVE_TESTS=ON -DLSERVE_BENCH=ON
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"

# The CUDA backend must compile wherever the toolkit is (about 2 minutes on 2 cores); its tests
# run on a machine with a GPU (scripts/gpu.sh) and skip here without one.
nvcc=$(command -v nvcc || true)
[ -n "$nvcc" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc; }
if [ -n "$nvcc" ]; then
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DLSERVE_CUDA=ON -DLSERVE_TESTS=ON -DLSERVE_BENCH=OFF \
    -DLSERVE_FUZZ=OFF -DCMAKE_CUDA_COMPILER="$nvcc"
  cmake --build build-cuda -j"$jobs" --target lserve lserve_cuda_tests cuda_attention_timing
  ./build-cuda/tests/cuda/lserve_cuda_tests --gtest_brief=1
else
  echo "test.sh: no CUDA toolkit here: the CUDA backend was not compiled"
fi

# Fuzz the file parsers briefly (libFuzzer + ASan, clang); FUZZ_SECONDS=600 for a long run.
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
