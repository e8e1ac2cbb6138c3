#!/usr/bin/env bash
# The accuracy table of the bundled model under every attention policy (README, "Accuracy"):
# one `lserve eval --json` per configuration into bench/results/accuracy/NAME.json, then
# bench/accuracy_table.py turns them into a Markdown table. Configurations already measured are
# skipped (delete a file to rerun it); ACCURACY_ONLY="name1 name2" runs just those.
#   bash bench/accuracy_sweep.sh            # ~4 minutes per configuration on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/accuracy
mkdir -p "$out"
lserve=${LSERVE:-./build/lserve}
grid=(--task passkey,niah,multikey,kv --lengths 4096,8192 --depths 0,0.25,0.5,0.75,1 --samples 1 --seed 11)
# Streaming heads keep sink 128 + local 256 tokens in prefill too: LServe's 8192-token prefill
# window would cover these whole prompts and test nothing at this scale.
grid+=(--prefill-local 256)

# name | flags (the model folder's profiled head_pattern.txt is used unless a pattern is given;
# the random patterns are `lserve profile-heads --random SEED --out FILE`, at the same ratio)
configs=(
  "dense|--attention dense"
  "lserve_b1024|--attention lserve --token-budget 1024"
  "streaming|--attention streaming"
  "streaming_random_seed1|--attention streaming --head-pattern $out/random_heads_seed1.txt"
  "streaming_random_seed2|--attention streaming --head-pattern $out/random_heads_seed2.txt"
  "streaming_random_seed3|--attention streaming --head-pattern $out/random_heads_seed3.txt"
  "streaming_random_seed7|--attention streaming --head-pattern $out/random_heads_seed7.txt"
  "streaming_ratio0.75|--attention streaming --streaming-ratio 0.75"
  "quest_b1024|--attention quest --token-budget 1024"
  "psa|--attention psa --psa-mass 0.9 --psa-min-budget 512 --psa-max-budget 4096"
  "lserve_b512|--attention lserve --token-budget 512"
  "lserve_b1024_flat64|--attention lserve --token-budget 1024 --logical-page-size 64"
  "lserve_b1024_interval1|--attention lserve --token-budget 1024 --selector-interval 1"
  "lserve_b1024_interval16|--attention lserve --token-budget 1024 --selector-interval 16"
)
for entry in "${configs[@]}"; do
  name=${entry%%|*}
  read -r -a flags <<<"${entry#*|}"
  if [ -n "${ACCURACY_ONLY:-}" ] && [[ " $ACCURACY_ONLY " != *" $name "* ]]; then continue; fi
  if [ -s "$out/$name.json" ]; then echo "$name: measured already"; continue; fi
  echo "$name: lserve eval ${grid[*]} ${flags[*]}"
  "$lserve" eval "${grid[@]}" "${flags[@]}" --json > "$out/$name.json.tmp"
  mv "$out/$name.json.tmp" "$out/$name.json"
done
python3 bench/accuracy_table.py "$out"/*.json > "$out/table.md"
cat "$out/table.md"
