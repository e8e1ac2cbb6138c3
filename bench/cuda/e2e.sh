#!/usr/bin/env bash
# End to end on one GPU, lserve and HF transformers side by side in the same run: a
# Llama-3-8B-shaped model (bench/configs/llama-3-8b.json) with dummy bf16 weights, prefill of
# 32K and 128K prompts and decode tokens/s at 32K and 128K context, batch 1 and 8, each against
# its floor (the copy bandwidth and the GEMM rate measured here, cuDNN's attention rate too).
#
#   bash bench/cuda/e2e.sh [OUT_DIR] [--quick]
#
# OUT_DIR (default build-gpu/e2e) receives e2e.csv (every row: system,case,context,batch,value,
# unit), e2e.md (the comparison table) and one log per step. --quick runs 4K contexts only, to
# prove the scripts end to end in a minute or two. "128K" is 131072 minus 64 tokens, so that
# prompt and decoded tokens stay inside the model's 131072-token context. A case whose KV cache
# does not fit in GPU memory (batch 8 at 128K: 8 x 16 GiB of KV beside 15 GiB of weights) is
# skipped on both sides and reported as skipped.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

out=build-gpu/e2e quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -*) echo "usage: $0 [OUT_DIR] [--quick]" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
mkdir -p "$out"
config=bench/configs/llama-3-8b.json
build=build-gpu
t_start=$(date +%s)
elapsed() { echo "$(($(date +%s) - t_start)) s"; }
status=0

if [ "$quick" -eq 1 ]; then
  contexts=(4096) decode_tokens=17 hf_steps=16
else
  contexts=(32768 131008) decode_tokens=33 hf_steps=32
fi
batches=(1 8)

source scripts/gpu_env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 | head -1 | tr -d ' ')

# ---- build (the same folder and flags as scripts/gpu.sh) ----
# A failed build skips the lserve cases only: the ceilings and HF still run and are reported.
echo "== build lserve ($(elapsed))"
lserve=$build/lserve
if ! cmake -S . -B "$build" "${LSERVE_GPU_CMAKE_FLAGS[@]}" >"$out/configure.log" 2>&1; then
  tail -30 "$out/configure.log"; echo "e2e.sh: configure failed: no lserve cases"; lserve="" status=1
elif ! cmake --build "$build" -j"$(nproc)" --target lserve >"$out/build.log" 2>&1; then
  grep -E "error|Error" "$out/build.log" | head -40; echo "e2e.sh: build failed: no lserve cases"; lserve="" status=1
fi

# ---- ceilings: copy bandwidth and cuBLAS bf16 GEMM, in our CSV schema ----
echo "== ceilings ($(elapsed))"
: >"$out/ceilings.csv"
if [ -f bench/cuda/peer_attention.py ] &&
   timeout 120 python3 bench/cuda/peer_attention.py --parts ceilings --csv "$out/ceilings_peer.csv" >"$out/ceilings.log" 2>&1; then
  python3 - "$out/ceilings_peer.csv" "$out/ceilings.csv" <<'PY'
import csv, sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w", newline="") as g:
    w = csv.writer(g)
    w.writerow(["system", "case", "context", "batch", "value", "unit"])
    for r in csv.DictReader(f):
        case = "copy" if r["peer"] == "copy" else "gemm" if r["peer"] == "cublas" else r["case"]
        w.writerow([r["peer"], case, r["context"], r["batch"], r["rate"], r["unit"]])
PY
  cat "$out/ceilings.csv"
else
  echo "ceilings not measured (see $out/ceilings.log): the report uses the rates given in bench_hf_e2e.py"
  status=1
fi

# Whether weights + batch x context of KV + 8 GiB for activations fit the GPU.
fits() {  # batch context
  python3 - "$config" "$1" "$2" "$gpu_mib" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); b, n, mib = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
kv = 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * hd * 2 * b * (n + 256)
L, h, i, v = c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"], c["vocab_size"]
layer = h * c["num_attention_heads"] * hd * 2 + 2 * h * c["num_key_value_heads"] * hd + 3 * h * i
weights = 2 * (L * layer + v * h * (1 if c.get("tie_word_embeddings") else 2))
need = weights + kv + (8 << 30)
print(f"{need / 2**30:.0f}")
sys.exit(0 if need <= mib * 2**20 else 1)
PY
}

# ---- lserve ----
lcsv=$out/lserve.csv
: >"$lcsv"
common=(bench --device cuda --load-format dummy --model "$config" --decode-tokens "$decode_tokens" --repeats 1
        --csv "$lcsv")
args=()
for n in "${contexts[@]}"; do args+=(--prompt-tokens "$n"); done
if [ -n "$lserve" ]; then
  echo "== lserve batch 1 ($(elapsed))"
  # One warm-up at 4K per length: the kernels and allocations are warm, and the long prompts are
  # prefilled once each.
  if ! timeout 300 "$lserve" "${common[@]}" "${args[@]}" --warmup 1 --warmup-tokens 4096 2>&1 | tee "$out/lserve_b1.log"; then
    echo "e2e.sh: lserve batch 1 failed"; status=1
  fi
  # Half the KV heads streaming (no head pattern for dummy weights: a uniform 50% pattern),
  # LServe's windows; retrieval heads dense until the page selector runs on the GPU.
  echo "== lserve batch 1, streaming heads ($(elapsed))"
  if ! timeout 300 "$lserve" "${common[@]}" "${args[@]}" --attention streaming --warmup 1 --warmup-tokens 4096 2>&1 |
       tee "$out/lserve_b1_streaming.log"; then
    echo "e2e.sh: lserve batch 1 streaming failed"; status=1
  fi
fi
for b in "${batches[@]}"; do
  [ "$b" -eq 1 ] || [ -z "$lserve" ] && continue
  for n in "${contexts[@]}"; do
    if ! need=$(fits "$b" "$n"); then
      echo "lserve batch $b at $n: skipped (needs ${need} GiB, the GPU has $((gpu_mib / 1024)) GiB)"
      echo "lserve,decode,$n,$b,,skipped: needs ${need} GiB" >>"$lcsv"
      continue
    fi
    echo "== lserve batch $b at $n ($(elapsed))"
    if ! timeout 300 "$lserve" "${common[@]}" --batch "$b" --prompt-tokens "$n" --warmup 1 2>&1 | tee "$out/lserve_b${b}_${n}.log"; then
      echo "e2e.sh: lserve batch $b at $n failed"; status=1
    fi
  done
done

# ---- HF transformers ----
echo "== HF transformers ($(elapsed))"
list() { local IFS=,; echo "$*"; }
if ! timeout 400 python3 python/bench_hf_e2e.py --config "$config" --csv "$out/hf.csv" \
       --prefill "$(list "${contexts[@]}")" --decode "$(list "${contexts[@]}")" --batch "$(list "${batches[@]}")" \
       --decode-steps "$hf_steps" 2>&1 | tee "$out/hf.log"; then
  echo "e2e.sh: HF failed"; status=1
fi

# ---- one CSV, one table ----
python3 - "$out/e2e.csv" "$out/ceilings.csv" "$lcsv" "$out/hf.csv" <<'PY'
import csv, os, sys
rows = []
for p in sys.argv[2:]:
    if os.path.exists(p) and os.path.getsize(p):
        rows += [r for r in csv.reader(open(p)) if r and r[0] != "system"]
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["system", "case", "context", "batch", "value", "unit"])
    w.writerows(rows)
PY
python3 python/bench_hf_e2e.py --report "$out/e2e.csv" --config "$config" --md "$out/e2e.md"
echo "== done in $(elapsed): $out/e2e.csv, $out/e2e.md (exit $status)"
exit $status
