#!/usr/bin/env bash
# Installs every Debian package that building and testing lserve needs, on a fresh machine.
# Idempotent: packages already present are skipped. Run as root (or with sudo available).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache
  nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  libopenblas-openmp-dev libpcre2-dev libutf8proc-dev libxxhash-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libpng-dev                 # lserve eval --png
  clang libclang-rt-14-dev libomp-14-dev   # libFuzzer and sanitizers for the fuzz targets
  nodejs npm                 # reference tokenizers and OpenAI clients in the tests
  python3 python3-numpy python3-matplotlib   # benchmark plots
  python3-jinja2             # the reference renderer of chat templates (what transformers uses)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm may come from elsewhere than Debian (a newer Node.js); only ask apt for it if absent.
if command -v npm >/dev/null 2>&1; then
  missing=("${missing[@]/npm/}"); missing=("${missing[@]/nodejs/}")
fi
read -r -a missing <<<"${missing[*]}"

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all Debian packages present"
fi
