#!/usr/bin/env bash
# Issue 12's safe default on the sets where SagaNet lost to the baseline (docs/results.md, Part 0,
# "The safe default"): `auto` (chosen by 3-fold cross-validation inside the labelled shots) beside
# saganet and baseline, with Part 2's settings and draws (scripts/study.sh), so every row is paired.
# Lymphoma's auto rows run with the unlabelled-pool protocol instead (scripts/unlabelled_study.sh).
# Resumable: rerun to continue.
#  1. Draws 0-4 ran with the first rule: the best mean fold score, saganet first
#     (--auto-candidates saganet baseline --auto-se 0). scripts/auto_rule_replay.py replays any rule
#     on their recorded fold scores.
#  2. Fresh draws 5-9 (--first-repeat 5) test today's default, chosen after seeing draws 0-4: the
#     one-standard-error rule, baseline first.
set -euo pipefail
cd "$(dirname "$0")/.."
export SAGANET_NATIVE=0  # Part 2's pooling, so saganet and baseline can be checked against its run files
DATA=${SAGANET_DATA:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
OUT=docs/study
COMMON=(--epochs 20 --image-size 64 --crops-per-image 16 --threads 2 --variants saganet baseline auto)
FIRST_RULE=(--repeats 5 --auto-candidates saganet baseline --auto-se 0)
if [[ "${PARTS:-1 2}" == *1* ]]; then
  $PY -m saganet study "$DATA/crc_val_he_7k_test70" --out "$OUT/auto_crc" --shots 3 5 "${COMMON[@]}" "${FIRST_RULE[@]}"
  $PY -m saganet study "$DATA/osteosarcoma_ut_test60" --out "$OUT/auto_osteosarcoma" --shots 5 --scale 0.5 \
      "${COMMON[@]}" "${FIRST_RULE[@]}"
fi
if [[ "${PARTS:-1 2}" == *2* ]]; then
  # shellcheck disable=SC2086
  $PY -m saganet study "$DATA/crc_val_he_7k_test70" --out "$OUT/auto_crc_fresh" --shots ${FRESH_SHOTS:-3 5} \
      "${COMMON[@]}" --first-repeat 5 --repeats "${FRESH_REPEATS:-5}"
fi
