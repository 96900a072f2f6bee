#!/usr/bin/env bash
# Issue 12's safe default on the sets where SagaNet lost to the baseline (docs/results.md, Part 0,
# "The safe default"): `auto` (saganet or baseline, chosen by 3-fold cross-validation inside the
# labelled shots) beside saganet and baseline, with Part 2's settings and draws (scripts/study.sh),
# so every row is paired. Lymphoma's auto rows run with the unlabelled-pool protocol instead
# (scripts/unlabelled_study.sh, stage "auto"). Resumable: rerun to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
export SAGANET_NATIVE=0  # Part 2's pooling, so saganet and baseline can be checked against its run files
DATA=${SAGANET_DATA:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
OUT=docs/study
COMMON=(--repeats 5 --epochs 20 --image-size 64 --crops-per-image 16 --threads 2 --variants saganet baseline auto)
$PY -m saganet study "$DATA/crc_val_he_7k_test70" --out "$OUT/auto_crc" --shots 3 5 "${COMMON[@]}"
$PY -m saganet study "$DATA/osteosarcoma_ut_test60" --out "$OUT/auto_osteosarcoma" --shots 5 --scale 0.5 "${COMMON[@]}"
