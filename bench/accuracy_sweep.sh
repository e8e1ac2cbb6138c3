#!/usr/bin/env bash
# The accuracy table of the bundled model under every attention policy (README, "Accuracy"):
# one `lserve eval --json --png` per configuration into bench/results/accuracy/NAME.{json,png},
# then bench/accuracy_table.py turns each grid's files into a Markdown table. Configurations
# already measured are skipped (delete a file to rerun it); ACCURACY_ONLY="name1 name2" runs
# just those.   bash bench/accuracy_sweep.sh      # about 3 hours on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/accuracy
mkdir -p "$out"
lserve=${LSERVE:-./build/lserve}
# Streaming heads keep sink 128 + local 256 tokens in prefill too: LServe's 8192-token prefill
# window would cover these whole prompts and test nothing at this scale.
common=(--prefill-local 256 --seed 11)
grid_8k=(--task passkey,niah,multikey,kv --lengths 4096,8192 --depths 0,0.25,0.5,0.75,1 --samples 1)
grid_8kx4=(--task passkey,niah,multikey,kv --lengths 4096,8192 --depths 0,0.25,0.5,0.75,1 --samples 4)
grid_16k=(--task passkey,niah --lengths 16384 --depths 0,0.5,1 --samples 1)
grid_16kmk=(--task multikey,kv --lengths 16384 --depths 0,0.5,1 --samples 1)
grid_8kmv=(--task multivalue,vartrack --lengths 4096,8192 --depths 0,0.25,0.5,0.75,1 --samples 1)

# name | grid | flags. Every row that streams heads names its pattern: heads_6tasks.txt is the
# bundled one (`lserve profile-heads`, profiled on all six tasks), heads_4tasks.txt the one
# bundled before (profiled on passkey, niah, multikey and kv only; the rows measured with it
# say "profiled" in the table), random_heads_seed*.txt are `lserve profile-heads --random SEED
# --out FILE` at the same ratio.
configs=(
  "dense|8k|--attention dense"
  "lserve_b1024|8k|--attention lserve --token-budget 1024 --head-pattern $out/heads_4tasks.txt"
  "streaming|8k|--attention streaming --head-pattern $out/heads_4tasks.txt"
  "streaming_random_seed1|8k|--attention streaming --head-pattern $out/random_heads_seed1.txt"
  "streaming_random_seed2|8k|--attention streaming --head-pattern $out/random_heads_seed2.txt"
  "streaming_random_seed3|8k|--attention streaming --head-pattern $out/random_heads_seed3.txt"
  "streaming_random_seed7|8k|--attention streaming --head-pattern $out/random_heads_seed7.txt"
  "quest_b1024|8k|--attention quest --token-budget 1024"
  "psa|8k|--attention psa --psa-mass 0.9 --psa-min-budget 512 --psa-max-budget 4096"
  "dense_16k|16k|--attention dense"
  "lserve_b1024_16k|16k|--attention lserve --token-budget 1024 --head-pattern $out/heads_4tasks.txt"
  "streaming_16k|16k|--attention streaming --head-pattern $out/heads_4tasks.txt"
  "quest_b1024_16k|16k|--attention quest --token-budget 1024"
  "psa_16k|16k|--attention psa --psa-mass 0.9 --psa-min-budget 512 --psa-max-budget 4096"
  "lserve_b512|8k|--attention lserve --token-budget 512 --head-pattern $out/heads_4tasks.txt"
  "lserve_b1024_flat64|8k|--attention lserve --token-budget 1024 --logical-page-size 64 --head-pattern $out/heads_4tasks.txt"
  "lserve_b1024_interval1|8k|--attention lserve --token-budget 1024 --selector-interval 1 --head-pattern $out/heads_4tasks.txt"
  "lserve_b1024_interval16|8k|--attention lserve --token-budget 1024 --selector-interval 16 --head-pattern $out/heads_4tasks.txt"
  "lserve_b1024_perquery|8k|--attention lserve --token-budget 1024 --selection query --head-pattern $out/heads_4tasks.txt"
  "streaming_ratio0.75|8k|--attention streaming --streaming-ratio 0.75 --head-pattern $out/heads_4tasks.txt"
  "dense_x4|8kx4|--attention dense"
  "lserve_b1024_x4|8kx4|--attention lserve --token-budget 1024 --head-pattern $out/heads_4tasks.txt"
  "quest_b1024_x4|8kx4|--attention quest --token-budget 1024"
  "streaming_x4|8kx4|--attention streaming --head-pattern $out/heads_4tasks.txt"
  "psa_x4|8kx4|--attention psa --psa-mass 0.9 --psa-min-budget 512 --psa-max-budget 4096"
  "dense_16kmk|16kmk|--attention dense"
  "lserve_b1024_16kmk|16kmk|--attention lserve --token-budget 1024 --head-pattern $out/heads_4tasks.txt"
  "dense_8kmv|8kmv|--attention dense"
  "lserve_b1024_8kmv|8kmv|--attention lserve --token-budget 1024 --head-pattern $out/heads_4tasks.txt"
  "streaming_8kmv|8kmv|--attention streaming --head-pattern $out/heads_4tasks.txt"
  "quest_b1024_8kmv|8kmv|--attention quest --token-budget 1024"
  "streaming_6tasks_8kmv|8kmv|--attention streaming --head-pattern $out/heads_6tasks.txt"
  "lserve_b1024_6tasks_8kmv|8kmv|--attention lserve --token-budget 1024 --head-pattern $out/heads_6tasks.txt"
  "streaming_6tasks|8k|--attention streaming --head-pattern $out/heads_6tasks.txt"
  "lserve_b1024_6tasks|8k|--attention lserve --token-budget 1024 --head-pattern $out/heads_6tasks.txt"
  "lserve_b1024_6tasks_x4|8kx4|--attention lserve --token-budget 1024 --head-pattern $out/heads_6tasks.txt"
  "lserve_b1024_6tasks_16k|16k|--attention lserve --token-budget 1024 --head-pattern $out/heads_6tasks.txt"
  "lserve_b1024_6tasks_16kmk|16kmk|--attention lserve --token-budget 1024 --head-pattern $out/heads_6tasks.txt"
  "streaming_6tasks_x4|8kx4|--attention streaming --head-pattern $out/heads_6tasks.txt"
  "lserve_b512_6tasks|8k|--attention lserve --token-budget 512 --head-pattern $out/heads_6tasks.txt"
)
for entry in "${configs[@]}"; do
  IFS='|' read -r name grid flagtext <<<"$entry"
  read -r -a flags <<<"$flagtext"
  if [ -n "${ACCURACY_ONLY:-}" ] && [[ " $ACCURACY_ONLY " != *" $name "* ]]; then continue; fi
  if [ -s "$out/$name.json" ]; then echo "$name: measured already"; continue; fi
  case "$grid" in
    16k) g=("${grid_16k[@]}") ;;
    8kx4) g=("${grid_8kx4[@]}") ;;
    16kmk) g=("${grid_16kmk[@]}") ;;
    8kmv) g=("${grid_8kmv[@]}") ;;
    *) g=("${grid_8k[@]}") ;;
  esac
  echo "$name: lserve eval ${common[*]} ${g[*]} ${flags[*]}"
  "$lserve" eval "${common[@]}" "${g[@]}" "${flags[@]}" --png "$out/$name.png" --json > "$out/$name.json.tmp"
  mv "$out/$name.json.tmp" "$out/$name.json"
done
shopt -s nullglob
files_16k=("$out"/*_16k.json)
files_16kmk=("$out"/*_16kmk.json)
files_x4=("$out"/*_x4.json)
files_8kmv=("$out"/*_8kmv.json)
files_8k=()
for f in "$out"/*.json; do
  [[ $f == *_16k.json || $f == *_16kmk.json || $f == *_x4.json || $f == *_8kmv.json ]] || files_8k+=("$f")
done
{
  echo "#### 4K and 8K tokens (passkey, niah, multikey, kv; 40 samples a row)"; echo
  python3 bench/accuracy_table.py "${files_8k[@]}" | sed '$d' | sed '$d'
  if ((${#files_x4[@]})); then
    echo; echo "#### 4K and 8K tokens, 4 samples per cell (160 samples a row)"; echo
    python3 bench/accuracy_table.py "${files_x4[@]}" | sed '$d' | sed '$d'
  fi
  if ((${#files_8kmv[@]})); then
    echo; echo "#### 4K and 8K tokens (multivalue and variable tracking; 20 samples a row)"; echo
    python3 bench/accuracy_table.py "${files_8kmv[@]}" | sed '$d' | sed '$d'
  fi
  if ((${#files_16k[@]})); then
    echo; echo "#### 16K tokens (passkey and niah; 6 samples a row)"; echo
    python3 bench/accuracy_table.py "${files_16k[@]}" | sed '$d' | sed '$d'
  fi
  if ((${#files_16kmk[@]})); then
    echo; echo "#### 16K tokens (multikey and kv; 6 samples a row)"; echo
    python3 bench/accuracy_table.py "${files_16kmk[@]}" | sed '$d' | sed '$d'
  fi
  echo
  echo '"(profiled)": the head pattern bundled when the row was measured, profiled on passkey, niah,'
  echo 'multikey and kv (now heads_4tasks.txt); "(heads_6tasks)": the one bundled now, profiled on all'
  echo 'six tasks.'
} > "$out/table.md"
cat "$out/table.md"
