#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for N seconds
# (default 20). Crashes and their inputs are left in build-fuzz/ and fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}

cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_C_COMPILER=clang -DLSERVE_FUZZ=ON -DLSERVE_TESTS=OFF -DLSERVE_BENCH=OFF -DLSERVE_NATIVE=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_targets

passed=0; failed=0
for target in build-fuzz/fuzz/fuzz_*; do
  [ -x "$target" ] || continue
  name=$(basename "$target")
  corpus=build-fuzz/corpus-$name
  mkdir -p "$corpus"
  seeds=fuzz/seeds/${name#fuzz_}
  echo "fuzz: $name for ${seconds}s"
  if (cd build-fuzz && "../$target" -max_total_time="$seconds" -max_len=65536 -print_final_stats=0 \
        "../$corpus" $( [ -d "$seeds" ] && echo "../$seeds" ) >"$name.log" 2>&1); then
    passed=$((passed + 1))
  else
    failed=$((failed + 1)); echo "fuzz: $name FAILED; see build-fuzz/$name.log"; tail -30 "build-fuzz/$name.log"
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
