#!/usr/bin/env bash
# The recorded small-sample study (docs/results.md). Resumable: rerun to continue where it stopped.
# Settings are identical for every variant and chosen so the whole study fits in about an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
# Recorded with the pure-PyTorch pooling, before the fused op existed: the fused op differs in the
# last float digits, which 20 epochs amplify (10-shot lymphoma repeat 0: 0.669 vs 0.672).
export SAGANET_NATIVE=0
DATA=${SAGANET_DATA:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
OUT=docs/study
COMMON=(--repeats 5 --epochs 20 --image-size 64 --crops-per-image 16 --threads 2
        --variants saganet baseline no-gate no-length no-mask classic)
mkdir -p "$OUT"
$PY -m saganet study "$DATA/lymphoma_iicbu" --out "$OUT/lymphoma" --shots 10 20 "${COMMON[@]}"
$PY -m saganet study "$DATA/crc_val_he_7k_test70" --out "$OUT/crc" --shots 3 5 "${COMMON[@]}"
# Osteosarcoma: 1024 px images at half resolution; split by patient (see docs/results.md).
$PY -m saganet study "$DATA/osteosarcoma_ut_test60" --out "$OUT/osteosarcoma" --shots 5 --scale 0.5 "${COMMON[@]}"
