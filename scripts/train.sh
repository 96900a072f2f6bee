#!/usr/bin/env bash
# Train on N images per class of DATA (`--variant auto` unless VARIANT is set: SagaNet or the baseline,
# chosen by cross-validation inside those images), evaluate on the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${DATA:-}}
if [ -z "$DATA" ]; then
  cat >&2 <<'MSG'
make train needs a labelled image set: an ImageFolder tree (<root>/<class>/<image>) or a folder with
manifest.csv (path,label[,patient]). For example:

    make train DATA=../shared/data/lymphoma_iicbu

Optional: SHOTS=20 (training images per class), EPOCHS=20, OUT=runs/main, VARIANT=auto.
MSG
  exit 2
fi
OUT=${OUT:-runs/main}
.venv/bin/saganet train "$DATA" --out "$OUT" --shots "${SHOTS:-20}" --val-fraction 0 --epochs "${EPOCHS:-20}" \
    --variant "${VARIANT:-auto}"
.venv/bin/saganet eval "$OUT" "$DATA" --exclude-train
