#!/usr/bin/env bash
# Run the whole test suite (benchmarks are separate: make bench): native checks, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-30} bash scripts/native_checks.sh
.venv/bin/python -m pytest tests -q "$@"
