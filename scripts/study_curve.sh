#!/usr/bin/env bash
# Learning curve on lymphoma: does the from-scratch model keep improving with more labels?
# (A diagnostic: nothing is selected on these numbers.) Resumable like scripts/study.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# Recorded with the pure-PyTorch pooling, before the fused op existed: the fused op differs in the
# last float digits, which 20 epochs amplify (10-shot lymphoma repeat 0: 0.669 vs 0.672).
export SAGANET_NATIVE=0
DATA=${SAGANET_DATA:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
$PY -m saganet study "$DATA/lymphoma_iicbu" --out docs/study/lymphoma_curve --shots 40 80 --repeats 2 \
  --epochs 20 --image-size 64 --crops-per-image 16 --threads 2 --variants saganet baseline classic
