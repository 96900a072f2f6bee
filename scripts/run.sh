#!/usr/bin/env bash
# The main job: whole-slide prediction with the demo bundle on OpenSlide's CC0 test slide.
set -euo pipefail
cd "$(dirname "$0")/.."
SLIDE=$(bash scripts/fetch_demo_slide.sh)
OUT=${OUT:-runs/demo-predict}
.venv/bin/saganet predict models/demo-crc7 "$SLIDE" --out "$OUT"
D="$OUT/$(basename "${SLIDE%.*}")"
.venv/bin/python - "$D" <<'PY'
import json, sys
d = sys.argv[1]
r = json.load(open(f"{d}/report.json"))
c = r["call"]
print(f"\nslide call ({r['model']}, DEMONSTRATION ONLY, not for diagnosis): {c['class']} "
      f"from {c['tiles_used']} of {r['tiles']} tiles, {r['tiles_per_second']} tiles/s with {r['backend']}, {r['seconds']} s in all")
print(f"  report:    {d}/report.json")
print(f"  tiles:     {d}/tiles.csv")
print(f"  heatmaps:  {d}/heatmap_<class>.png  ({', '.join(r['outputs']['heatmaps'])})")
print(f"  GeoJSON:   {d}/tiles.geojson  (QuPath: File > Import objects)")
PY
