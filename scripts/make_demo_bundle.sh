#!/usr/bin/env bash
# Re-create models/demo-crc7 from the CRC-VAL-HE-7K subset in ../shared/data (the exact commands
# recorded in its card). The images never enter the repository; only the bundle does.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/crc_val_he_7k_test70}
rm -rf runs/demo-crc7 models/demo-crc7
.venv/bin/saganet train "$DATA" --out runs/demo-crc7 --epochs 30 --val-fraction 0 --seed 0 --variant saganet
.venv/bin/saganet export runs/demo-crc7 --out models/demo-crc7 --mpp 0.5 --tile-size 224 --card scripts/demo_card.md
