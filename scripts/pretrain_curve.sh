#!/usr/bin/env bash
# Learning curves for issue 3 (docs/results.md): lymphoma linear-probe accuracy against
#  (a) pretraining time: the snapshots of the study's lymphoma encoder (every 5 of 30 epochs);
#  (b) unlabelled tiles: SimCLR on 1,000 / 2,000 / all 4,063 tiles of the same pool, 150 steps each;
#  (c) a diagnostic, NOT part of the study: the same recipe on the lymphoma images themselves
#      (transductive: they include the test images), to measure what in-domain unlabelled tissue
#      would buy. No reported study number uses it.
# Resumable: finished encoders are skipped; the probe reruns (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SAGANET_DATA:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
ENC=runs/pretrain CURVE=runs/pretrain/curve
mkdir -p "$CURVE" docs/pretrain
L=$DATA/lymphoma_iicbu C=$DATA/crc_val_he_7k_test70 O=$DATA/osteosarcoma_ut_test60 W=$DATA/wsi

run() {  # name, epochs, max tiles, sources...
  local name=$1 epochs=$2 tiles=$3; shift 3
  [ -f "$CURVE/$name.json" ] || $PY -u -m saganet pretrain "$@" --out "$CURVE/$name.safetensors" --epochs "$epochs" \
      --max-tiles "$tiles" --threads 2 2>&1 | tr '\r' '\n' | grep -v '^pretrain simclr' >> "docs/pretrain/curve.log"
  cp "$CURVE/$name.json" docs/pretrain/
}
# 150 steps of batch 256 each: 1,000 tiles = 3 steps/epoch, 2,000 = 7, 4,063 = 15.
run tiles1000 50 1000 "$C" "$O" "$W"
run tiles2000 22 2000 "$C" "$O" "$W"
run tiles4063 10 20000 "$C" "$O" "$W"
run transductive-lymphoma 14 4063 "$L"  # about 2,990 tiles: 11 steps per epoch

$PY scripts/probe.py "$L" "$ENC"/lymph-pool-simclr-epoch0{05,10,15,20,25}.safetensors "$ENC/lymph-pool-simclr.safetensors" \
    "$CURVE"/tiles{1000,2000,4063}.safetensors "$CURVE/transductive-lymphoma.safetensors" \
    --shots 10 20 --repeats 5 --out docs/pretrain/probe_curve.json
$PY scripts/curve_report.py
