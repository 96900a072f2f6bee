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
if [ ${#NEED[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${NEED[@]}" > /dev/null
  else
    echo "setup: install ${NEED[*]} (Debian/Ubuntu names) for the native engine and the scanner;" \
         "without them saganet builds without the native engine" >&2
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
