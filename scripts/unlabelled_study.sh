#!/usr/bin/env bash
# The study of learning from unlabelled cases (docs/results.md, Part 0). Resumable: rerun to continue.
# Per repeat: N labelled images per class; the other images are split, stratified, into an unlabelled
# pool (half) and a test set; every row is tested on the same test set and never sees a pool label.
# Rows: labelled only, + self-training on the pool, + SimCLR pretraining on the pool, + both; for saganet
# and baseline, and classic (stage "main"); then `auto` from scratch (stage "auto") and after pretraining
# (stage "auto-pretrain"), and the length head on the pool's encoder kept frozen (stage "frozen"). Settings
# of every deep row are those of Part 2. STAGES (default "main auto auto-pretrain frozen") names the stages
# to run, in that order.
# In the background at low priority: `setsid nice -n 19 bash scripts/unlabelled_study.sh`, then
# `echo 19 > /proc/PID/autogroup` for its python: with Linux's autogroups, plain nice only orders the
# processes of one session, and the study would still take half of the 2 cores from everything else.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SAGANET_DATA:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
OUT=docs/study
SHOTS=${SHOTS:-20 10}
COMMON=(--epochs 20 --image-size 64 --crops-per-image 16 --threads 2 --unlabelled-fraction 0.5
        --mask-focus-relative 0)  # the fixed focus floor this study started with (lymphoma: 0.99 valid either way)
STAGES=${STAGES:-main auto auto-pretrain frozen}
mkdir -p "$OUT/unlabelled_lymphoma/encoders" "$OUT/unlabelled_lymphoma_auto" "$OUT/unlabelled_lymphoma_frozen"
# The first stage: every row above.
if [[ " $STAGES " == *" main "* ]]; then
  # shellcheck disable=SC2086
  $PY -m saganet study "$DATA/lymphoma_iicbu" --out "$OUT/unlabelled_lymphoma" --shots $SHOTS "${COMMON[@]}" \
      --repeats "${REPEATS:-5}" --variants saganet baseline classic --pool-methods selftrain pretrain pretrain+selftrain
fi
# Then `auto` (baseline or saganet, chosen by 3-fold cross-validation inside the labelled shots, the
# one-standard-error rule) on the same draws, pools and test sets: labelled only (--pool-split), and
# after pretraining on the pool. It shares the first stage's encoders (same draws: the same pool).
AUTO=(--repeats "${AUTO_REPEATS:-${REPEATS:-5}}" --variants auto)
if [[ " $STAGES " == *" auto "* ]]; then
  # shellcheck disable=SC2086
  $PY -m saganet study "$DATA/lymphoma_iicbu" --out "$OUT/unlabelled_lymphoma_auto" --shots $SHOTS "${COMMON[@]}" \
      "${AUTO[@]}" --pool-split
fi
if [[ " $STAGES " == *" auto-pretrain "* ]]; then
  ln -sfn ../unlabelled_lymphoma/encoders "$OUT/unlabelled_lymphoma_auto/encoders"
  # shellcheck disable=SC2086
  $PY -m saganet study "$DATA/lymphoma_iicbu" --out "$OUT/unlabelled_lymphoma_auto" --shots $SHOTS "${COMMON[@]}" \
      "${AUTO[@]}" --pool-methods pretrain
fi
# The issue's question: does the length head gain on frozen in-domain features what it gained on frozen
# out-of-domain ones (Part 1: +7 points over the baseline's linear head)? Same encoders as the first stage.
if [[ " $STAGES " == *" frozen "* ]]; then
  ln -sfn ../unlabelled_lymphoma/encoders "$OUT/unlabelled_lymphoma_frozen/encoders"
  # The labelled-only rows (and the fine-tuned +pretrain rows, for the report) are the first stage's runs,
  # linked rather than trained again: same draws and settings, so a rerun would give the same numbers.
  mkdir -p "$OUT/unlabelled_lymphoma_frozen/runs"
  for f in "$OUT"/unlabelled_lymphoma/runs/*_{saganet,baseline}{,+pretrain}.json; do
    [[ -e $f ]] && ln -sfn "../../unlabelled_lymphoma/runs/$(basename "$f")" "$OUT/unlabelled_lymphoma_frozen/runs/"
  done
  # shellcheck disable=SC2086
  $PY -m saganet study "$DATA/lymphoma_iicbu" --out "$OUT/unlabelled_lymphoma_frozen" --shots $SHOTS "${COMMON[@]}" \
      --repeats "${REPEATS:-5}" --variants saganet baseline --pool-methods pretrain+frozen
fi
