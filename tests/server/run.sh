#!/usr/bin/env bash
# Integration tests of `lserve serve` with the official `openai` npm client (server.test.mjs).
# Usage: tests/server/run.sh LSERVE_BINARY. Exits 77 (skipped) without node/npm or offline.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -ne 1 ] || [ ! -x "$1" ]; then
  echo "usage: $0 LSERVE_BINARY" >&2
  exit 2
fi
export LSERVE="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
source "$here/../npm_ci.sh"
npm_ci "$here" server_tests || exit $?
cd "$here"
exec node --test --test-concurrency=1 --test-timeout=600000 server.test.mjs
