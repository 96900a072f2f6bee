#!/usr/bin/env bash
# Create .venv (if needed) and install saganet with everything it needs, on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch 2.13.0 first, so nothing later pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" numpy "setuptools>=77" "pybind11>=2.12" "cmake>=3.22" ninja
# Builds the native parts too (CMake: kernels, CUDA kernels when nvcc is found, torch op, saganet._C).
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
