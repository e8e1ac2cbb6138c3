# shellcheck shell=bash
# Sourced by the GPU scripts (scripts/gpu.sh, bench/cuda/e2e.sh) from the repository root.
# Build dependencies missing on the GPU image (pcre2, utf8proc, xxhash, cpp-httplib, libpng dev
# files) may come along as Debian packages in .carry/debs; they are unpacked into a private
# prefix, never into /, and the compiler, pkg-config, CMake and the loader are pointed at it.
if compgen -G ".carry/debs/*.deb" >/dev/null; then
  prefix=/tmp/lserve-deps
  rm -rf "$prefix" && mkdir -p "$prefix"
  for deb in .carry/debs/*.deb; do dpkg -x "$deb" "$prefix"; done
  pc="$prefix/usr/lib/x86_64-linux-gnu/pkgconfig"
  sed -i "s|^prefix=.*|prefix=$prefix/usr|" "$pc"/*.pc
  # Static-link requirements (openssl, brotli .pc files) the shared library does not need.
  sed -i "/^Requires.private/d" "$pc"/*.pc
  export PKG_CONFIG_PATH="$pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export CMAKE_PREFIX_PATH="$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}"
  # Headers that httplib.h includes (openssl's arch-specific ones live one folder down).
  export CPATH="$prefix/usr/include:$prefix/usr/include/x86_64-linux-gnu${CPATH:+:$CPATH}"
fi

# The CMake configuration every GPU script builds with (one build folder, shared).
# shellcheck disable=SC2034  # used by the scripts that source this one
LSERVE_GPU_CMAKE_FLAGS=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DLSERVE_CUDA=ON -DLSERVE_BENCH=OFF -DLSERVE_FUZZ=OFF)
