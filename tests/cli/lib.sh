# What the black-box CLI tests share (sourced): the lserve binary from $1, the repository root,
# a scratch folder removed on exit, and a failure counter (`fail MESSAGE`; `finish` exits with
# it). Usage in a test: source "$(dirname "$0")/lib.sh" "$@"
set -uo pipefail
lserve=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
model=$here/models/lserve-tiny-16k
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
