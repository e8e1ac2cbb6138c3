#!/usr/bin/env bash
# Compares `lserve chat-template` with Python jinja2 and @huggingface/jinja on the real chat
# templates of tests/fixtures/chat_templates (see compare.mjs).
# Usage: tests/chat_template_compare/run.sh BUILD_DIR|LSERVE_BINARY
# Installs the pinned @huggingface/jinja (package-lock.json) when node_modules lacks it. Exits 77,
# ctest's "skipped", when node/npm are missing or the package cannot be installed (offline).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR|LSERVE_BINARY" >&2
  exit 2
fi
lserve="$1"
[ -d "$lserve" ] && lserve="$lserve/lserve"
if [ ! -x "$lserve" ] || [ -d "$lserve" ]; then
  echo "chat_template_compare: no lserve binary at $lserve" >&2
  exit 1
fi
lserve="$(cd "$(dirname "$lserve")" && pwd)/$(basename "$lserve")"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "chat_template_compare: SKIPPED: node and npm are needed for @huggingface/jinja"
  exit 77
fi

cd "$here"
locked_version=$(node -p 'require("./package-lock.json").packages["node_modules/@huggingface/jinja"].version')
installed_version=$(node -p 'try { require("./node_modules/@huggingface/jinja/package.json").version } catch { "" }')
if [ "$locked_version" != "$installed_version" ]; then
  echo "chat_template_compare: installing @huggingface/jinja $locked_version (npm ci)"
  if ! npm ci --no-audit --no-fund --loglevel=error; then
    echo "chat_template_compare: SKIPPED: npm ci failed (offline?); cannot get @huggingface/jinja"
    exit 77
  fi
fi
exec node compare.mjs "$lserve"
