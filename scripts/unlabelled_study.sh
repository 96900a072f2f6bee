#!/usr/bin/env bash
# The study of learning from unlabelled cases (docs/results.md, Part 0). Resumable: rerun to continue.
# Per repeat: N labelled images per class; the other images are split, stratified, into an unlabelled
# pool (half) and a test set; every row is tested on the same test set and never sees a pool label.
# Rows: labelled only, + self-training on the pool, + SimCLR pretraining on the pool, + both; for saganet
# and baseline, and classic. Settings of every deep row are those of Part 2.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SAGANET_DATA:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
OUT=docs/study
SHOTS=${SHOTS:-20 10}
COMMON=(--repeats ${REPEATS:-5} --epochs 20 --image-size 64 --crops-per-image 16 --threads 2
        --variants saganet baseline classic --pool-methods selftrain pretrain pretrain+selftrain --unlabelled-fraction 0.5
        --mask-focus-relative 0)  # the fixed focus floor this study started with (lymphoma: 0.99 valid either way)
mkdir -p "$OUT"
# shellcheck disable=SC2086
$PY -m saganet study "$DATA/lymphoma_iicbu" --out "$OUT/unlabelled_lymphoma" --shots $SHOTS "${COMMON[@]}"
