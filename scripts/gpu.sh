#!/usr/bin/env bash
# The one script a GPU machine runs: builds lserve with the CUDA backend, runs the CUDA tests
# (op-by-op against the CPU backend, attention, KV layout, whole-model logits against HF), a
# short generation through the CLI on the GPU, and on request compute-sanitizer and the
# attention and linear-layer timings. Ends with a summary.
#
#   scripts/gpu.sh [--sanitize] [--bench] [--all]
#
# Build dependencies missing on the GPU image may come along as Debian packages in .carry/debs
# (scripts/gpu_env.sh unpacks them into a private prefix, never into /).
# Logs go to $OUT when it is set (else build-gpu/logs).
set -uo pipefail
cd "$(dirname "$0")/.."

sanitize=0 bench=0
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=1 ;;
    --bench) bench=1 ;;
    --all) sanitize=1 bench=1 ;;
    *) echo "usage: $0 [--sanitize] [--bench] [--all]" >&2; exit 2 ;;
  esac
done

build=build-gpu
logs=${OUT:-$build/logs}
mkdir -p "$logs"
summary=()
status=0
note() { summary+=("$1"); }

source scripts/gpu_env.sh

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
nvcc --version | tail -1

# ---- build ----
start=$(date +%s)
if ! cmake -S . -B "$build" "${LSERVE_GPU_CMAKE_FLAGS[@]}" >"$logs/configure.log" 2>&1; then
  tail -30 "$logs/configure.log"
  echo "gpu.sh: configure failed"
  exit 1
fi
if ! cmake --build "$build" -j16 --target lserve_cuda_tests lserve cuda_attention_timing cuda_linear_timing >"$logs/build.log" 2>&1; then
  grep -E "error|Error" "$logs/build.log" | head -40
  echo "gpu.sh: build failed"
  exit 1
fi
note "build: ok in $(($(date +%s) - start)) s"

# ---- tests ----
tests="$build/tests/cuda/lserve_cuda_tests"
"$tests" --gtest_color=no 2>&1 | tee "$logs/tests.log"
rc=${PIPESTATUS[0]}
count() { grep -Eo "^\[  $1 *\] [0-9]+ test" "$logs/tests.log" | grep -Eo "[0-9]+" || echo 0; }
note "tests: $(count PASSED) passed, $(count FAILED) failed, $(count SKIPPED) skipped (exit $rc)"
[ "$rc" -eq 0 ] || status=1

# ---- the CLI on the GPU ----
if "$build/lserve" generate --device cuda -p "The capital of France is" -n 24 --temperature 0 \
     >"$logs/generate.log" 2>&1; then
  note "lserve generate --device cuda: ok ($(grep -Eo 'decode [0-9.]+ tokens/s' "$logs/generate.log"))"
else
  tail -5 "$logs/generate.log"
  note "lserve generate --device cuda: FAILED"
  status=1
fi

# ---- overlapped decode steps (the default) through the CLI: the same greedy text as without ----
if "$build/lserve" generate --device cuda -p "The capital of France is" -n 48 --temperature 0 --overlap-steps \
     >"$logs/generate_overlap.log" 2>&1 &&
   "$build/lserve" generate --device cuda -p "The capital of France is" -n 48 --temperature 0 --no-overlap-steps \
     >"$logs/generate_plain.log" 2>&1 &&
   cmp -s <(grep -v "^\[" "$logs/generate_overlap.log") <(grep -v "^\[" "$logs/generate_plain.log"); then
  note "lserve generate --device cuda --overlap-steps: the same text ($(grep -Eo 'decode [0-9.]+ tokens/s' "$logs/generate_overlap.log"))"
else
  diff <(grep -v "^\[" "$logs/generate_overlap.log") <(grep -v "^\[" "$logs/generate_plain.log") | head -10
  note "lserve generate --device cuda --overlap-steps: FAILED or a different text"
  status=1
fi

# ---- the default policy on the GPU: a prompt past the prefill window runs lserve ----
if "$build/lserve" eval --device cuda --task passkey,niah --lengths 12288 --depths 0,0.5,1 --samples 1 --json \
     >"$logs/eval_auto.json" 2>"$logs/eval_auto.log" &&
   grep -q -- "--attention auto: lserve" "$logs/eval_auto.log"; then
  note "lserve eval --device cuda at 12K (auto: lserve): $(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("%d/%d correct, policy %s" % (r["correct"], r["total"], r["attention"]["policy"]))' "$logs/eval_auto.json")"
else
  tail -5 "$logs/eval_auto.log"
  note "lserve eval --device cuda at 12K with --attention auto: FAILED (or auto did not pick lserve)"
  status=1
fi

# ---- compute-sanitizer ----
if [ "$sanitize" -eq 1 ]; then
  run_tool() {  # tool, gtest filter
    # Bounded: a sanitized run is 10-100x slower, and a stuck one must not eat the whole lease.
    timeout 150 compute-sanitizer --tool "$1" --error-exitcode 99 "$tests" --gtest_color=no \
      --gtest_filter="$2" >"$logs/sanitizer-$1.log" 2>&1
    local code=$?
    note "compute-sanitizer $1: $(grep -E "(ERROR|RACECHECK) SUMMARY" "$logs/sanitizer-$1.log" | tail -1) (exit $code)"
    [ "$code" -eq 0 ] || { status=1; grep -m 20 -E "^=+ (Invalid|Race|Error|ERROR)" "$logs/sanitizer-$1.log"; }
  }
  run_tool memcheck "CudaOps.*:CudaKvLayout.*:CudaAttention.FixedShapes:CudaAttention.Decode*:CudaSampling.GreedyIsTheArgmax:CudaSampling.Draws*:*GraphsChangeNothing/tiny_llama:CudaStreaming.PrefillChunksAndDecodeMatchTheCpu:CudaStreaming.PageSelectionMatchesTheCpu:CudaPageSelect.*:CudaRopeKvAppend.*"
  run_tool racecheck "CudaAttention.FixedShapes:CudaSampling.GreedyIsTheArgmax:CudaStreaming.PageSelectionMatchesTheCpu:CudaPageSelect.*:CudaRopeKvAppend.*"
fi

# ---- attention timing ----
if [ "$bench" -eq 1 ]; then
  if "$build/bench/cuda/cuda_attention_timing" 2>&1 | tee "$logs/attention_timing.log"; then
    note "attention timing: see above"
  else
    note "attention timing: FAILED"
    status=1
  fi
  if "$build/bench/cuda/cuda_linear_timing" 2>&1 | tee "$logs/linear_timing.log"; then
    note "linear timing: $(grep "the layer's linears *1 " "$logs/linear_timing.log" | tr -s ' ')"
  else
    note "linear timing: FAILED"
    status=1
  fi
fi

echo
echo "==== gpu.sh summary ===="
printf '%s\n' "${summary[@]}"
exit $status
