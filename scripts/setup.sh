#!/usr/bin/env bash
# Create .venv (if needed) and install saganet with everything it needs, on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# C++ libraries of the native engine and the scanner example (Debian/Ubuntu packages): JSON for the
# bundle manifest, OpenSSL for its checksums, OpenSlide's C library for the scanner.
NEED=()
[ -f /usr/include/nlohmann/json.hpp ] || NEED+=(nlohmann-json3-dev)
[ -f /usr/include/openssl/evp.h ] || NEED+=(libssl-dev)
[ -f /usr/include/openslide/openslide.h ] || NEED+=(libopenslide-dev)
command -v pkg-config > /dev/null || NEED+=(pkg-config)
# The fuzz target (scripts/fuzz.sh) needs Clang with its libFuzzer runtime.
command -v clang++ > /dev/null || NEED+=(clang)
ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a > /dev/null 2>&1 || NEED+=(libclang-rt-14-dev)
# The viewer's browser tests drive a real headless Chromium through its WebDriver; npm installs
# OpenSeadragon, which the server serves from node_modules.
command -v chromium > /dev/null || NEED+=(chromium)
command -v chromedriver > /dev/null || NEED+=(chromium-driver)
command -v npm > /dev/null || NEED+=(npm)
if [ ${#NEED[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${NEED[@]}" > /dev/null
  else
    echo "setup: install ${NEED[*]} (Debian/Ubuntu names): the native engine and the scanner need the" \
         "libraries, the viewer needs npm, its tests Chromium and chromedriver" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch 2.13.0 first, so nothing later pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" numpy "setuptools>=77" "pybind11>=2.12" "cmake>=3.22" ninja
# Builds the native parts too (CMake: kernels, CUDA kernels when nvcc is found, torch op, saganet._C).
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
# The viewer's JavaScript dependency (OpenSeadragon), exactly as package-lock.json pins it.
if command -v npm > /dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
else
  echo "setup: npm not found; the viewer at / cannot show slides until \`npm ci\` runs here" >&2
fi
