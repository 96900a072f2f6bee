#!/usr/bin/env bash
# Run the whole test suite (benchmarks are separate: make bench).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest tests -q "$@"
