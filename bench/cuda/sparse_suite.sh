#!/usr/bin/env bash
# LServe's sparse attention on the GPU against dense and the peers, in one run on one GPU:
#   - attention kernels, one Llama-3-8B layer: bench/cuda/attention_timing (dense, half the heads
#     streaming at LServe's and DuoAttention's windows, LServe decode with the page selector),
#     and the layer's linears at decode batch sizes, cuBLASLt vs ours (bench/cuda/linear_timing);
#   - the peers on the same GPU: torch SDPA (cuDNN, flash), FlexAttention with the streaming
#     mask, a PyTorch Quest, and the copy and GEMM ceilings (bench/cuda/peer_attention.py);
#   - end to end, a Llama-3-8B-shaped model with dummy weights (bench/configs/llama-3-8b-512k.json:
#     its context stretched to 512K): prefill time and decode ms/token at 128K and 256K, lserve
#     (LServe's policy; needs the GPU page selector on) vs lserve dense vs HF transformers, batch 1,
#     each decode step broken down (host planning, device kernels) by `lserve bench`; and LServe
#     at 128K x8 (dense does not fit).
# Then the plots (bench/cuda/plot_sparse_gpu.py). Everything lands in OUT_DIR (default
# build-gpu/sparse). PARTS (default kernels,peers,e2e,plots) picks some of those, so that the
# suite can also run in pieces into the same OUT_DIR; the parts dependent-launch and overlap (not
# defaults) time the decode path with programmatic dependent launch, or overlapped decode steps,
# on and off in one run, and the part max-context (not a default: a 1M-token prefill takes
# minutes) runs one 1M-token sequence under LServe on the GPU and asks dense for the same (its KV
# does not fit beside the weights).
#
#   bash bench/cuda/sparse_suite.sh [OUT_DIR] [PARTS, e.g. kernels,peers]
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
out=${1:-build-gpu/sparse}
parts=${2:-kernels,peers,e2e,plots}
want() { [[ ",$parts," == *",$1,"* ]]; }
mkdir -p "$out"
source scripts/gpu_env.sh
status=0
start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start)) s"; }

echo "== build ($(elapsed))"
if ! { cmake -S . -B build-gpu "${LSERVE_GPU_CMAKE_FLAGS[@]}" >"$out/configure.log" 2>&1 &&
       cmake --build build-gpu -j"$(nproc)" --target lserve cuda_attention_timing cuda_linear_timing >"$out/build.log" 2>&1; }; then
  grep -E "error" "$out/build.log" | head -20
  echo "sparse_suite.sh: build failed"
  exit 1
fi

if want kernels; then
  echo "== attention kernels ($(elapsed))"
  build-gpu/bench/cuda/cuda_attention_timing 2>&1 | tee "$out/attention_lserve.txt" || status=1
  build-gpu/bench/cuda/cuda_linear_timing 2>&1 | tee "$out/linear_timing.txt" || status=1
fi

if want peers; then
  echo "== peers ($(elapsed))"
  rm -f "$out/attention_peers.csv"
  PYTHONUNBUFFERED=1 timeout 500 python3 bench/cuda/peer_attention.py --csv "$out/attention_peers.csv" 2>&1 |
    grep -v Warning | tee "$out/attention_peers.log" || status=1
fi

config=bench/configs/llama-3-8b-512k.json
if want e2e; then
  echo "== end to end ($(elapsed))"
  rm -f "$out/e2e.csv" "$out/hf.csv" "$out/e2e.log"
  for policy in dense lserve; do
    timeout 400 build-gpu/lserve bench --device cuda --load-format dummy --model "$config" --attention "$policy" \
      --prompt-tokens 131072 --prompt-tokens 262144 --decode-tokens 33 --repeats 1 --warmup 1 --warmup-tokens 4096 \
      --csv "$out/e2e.csv" 2>&1 | grep -v "\[info\]" | tee -a "$out/e2e.log" || status=1
  done
  timeout 400 build-gpu/lserve bench --device cuda --load-format dummy --model "$config" --attention lserve --batch 8 \
    --prompt-tokens 131072 --decode-tokens 33 --repeats 1 --warmup 1 --warmup-tokens 4096 \
    --csv "$out/e2e.csv" 2>&1 | grep -v "\[info\]" | tee -a "$out/e2e.log" || status=1
  PYTHONUNBUFFERED=1 timeout 400 python3 python/bench_hf_e2e.py --config "$config" --csv "$out/hf.csv" --prefill 131072,262144 \
    --decode 131072,262144 --batch 1 --decode-steps 16 2>&1 | grep -v Warning | tee "$out/hf.log" || status=1
  python3 python/bench_hf_e2e.py --report "$out/e2e.csv,$out/hf.csv" --config "$config" --md "$out/e2e.md" >/dev/null ||
    status=1
fi

# Programmatic dependent launch on and off in one run (not in the default parts): the LServe
# decode section at batch 1, the linears, and LServe and dense end to end at 256K.
if want dependent-launch; then
  echo "== dependent launch on and off ($(elapsed))"
  for mode in on off; do
    flag=() tool_flag=()
    [ "$mode" = on ] && flag=(--dependent-launch) tool_flag=(dependent-launch)
    build-gpu/bench/cuda/cuda_attention_timing lserve batch=1 "${tool_flag[@]}" 2>&1 |
      tee "$out/dependent_launch_$mode.txt" || status=1
    build-gpu/bench/cuda/cuda_linear_timing "${tool_flag[@]}" 2>&1 | tee -a "$out/dependent_launch_$mode.txt" || status=1
    for policy in lserve dense; do
      timeout 300 build-gpu/lserve bench --device cuda --load-format dummy --model "$config" --attention "$policy" \
        --prompt-tokens 262144 --decode-tokens 33 --repeats 1 --warmup 1 --warmup-tokens 4096 "${flag[@]}" 2>&1 |
        grep -v "\[info\]" | tee -a "$out/dependent_launch_$mode.txt" || status=1
    done
  done
fi

# Overlapped decode steps (the default; --no-overlap-steps) off and on in one run (not in the default parts):
# LServe at 256K x1 off, on, off, on (so that drift shows), dense at 256K x1 off and on, and
# LServe at 128K x8 off and on.
if want overlap; then
  echo "== overlapped decode steps off and on ($(elapsed))"
  e2e_run() {  # POLICY BATCH PROMPT MODE
    local flag=(--no-overlap-steps)
    [ "$4" = on ] && flag=(--overlap-steps)
    echo "-- $1 at $3 x$2, overlap $4"
    timeout 300 build-gpu/lserve bench --device cuda --load-format dummy --model "$config" --attention "$1" \
      --batch "$2" --prompt-tokens "$3" --decode-tokens 33 --repeats 1 --warmup 1 --warmup-tokens 4096 "${flag[@]}" \
      --csv "$out/overlap.csv" 2>&1 | grep -v "\[info\]" | tee -a "$out/overlap.txt" || status=1
  }
  rm -f "$out/overlap.csv" "$out/overlap.txt"
  for mode in off on off on; do e2e_run lserve 1 262144 "$mode"; done
  for mode in off on; do e2e_run dense 1 262144 "$mode"; done
  for mode in off on; do e2e_run lserve 8 131072 "$mode"; done
fi

# One sequence of 1M tokens (bench/configs/llama-3-8b-2m.json: the context stretched to 2M):
# LServe's KV (about 68 GiB) fits beside the 15 GiB of weights on a 140 GiB GPU, dense's (128 GiB)
# does not, and must fail with a clear error rather than crash.
if want max-context; then
  echo "== the largest context ($(elapsed))"
  long=bench/configs/llama-3-8b-2m.json
  timeout 560 build-gpu/lserve bench --device cuda --load-format dummy --model "$long" --attention lserve \
    --prompt-tokens 1048576 --decode-tokens 33 --repeats 1 --warmup 0 --csv "$out/max_context.csv" 2>&1 |
    grep -v "\[info\]" | tee "$out/max_context.log" || status=1
  if timeout 120 build-gpu/lserve bench --device cuda --load-format dummy --model "$long" --attention dense \
       --prompt-tokens 1048576 --decode-tokens 9 --repeats 1 --warmup 0 >>"$out/max_context.log" 2>&1; then
    echo "dense at 1M tokens ran: it was expected not to fit" | tee -a "$out/max_context.log"
  else
    echo "dense at 1M tokens, as expected, did not run: $(tail -1 "$out/max_context.log")" | tee -a "$out/max_context.log"
  fi
fi

if want plots; then
  echo "== plots ($(elapsed))"
  python3 bench/cuda/plot_sparse_gpu.py "$out/attention_lserve.txt" "$out/attention_peers.csv" "$out/sparse_gpu.png" ||
    status=1
fi
echo "== done in $(elapsed) (exit $status): $out"
exit $status
