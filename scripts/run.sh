#!/usr/bin/env bash
# The main job: whole-slide prediction with the demo bundle on OpenSlide's CC0 test slide, then the
# server on the same bundle.
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

# Then the server on the same bundle, in the foreground (Ctrl-C stops it; slide jobs persist in
# runs/serve-state and resume at the next start).
PORT=${PORT:-8000}
URL="http://127.0.0.1:$PORT"
TILE=$(.venv/bin/python - <<'PY'
from PIL import Image

from saganet.slide import open_reader

with open_reader(".cache/demo/cmu_small_region.svs") as reader:  # one tissue tile of the demo slide
    Image.fromarray(reader.read(1122, 1120, 224, 224)).save(".cache/demo/tile.png")
print(".cache/demo/tile.png")
PY
)
cat <<MSG

Starting the server at $URL (OpenAPI: $URL/docs). Try, from another terminal:
  curl $URL/healthz
  curl $URL/readyz
  curl $URL/metrics
  curl -F tiles=@$TILE $URL/v1/classify
  curl -H 'content-type: application/json' -d '{"path": "cmu_small_region.svs"}' $URL/v1/slides   # -> {"id": ...}
  curl -F file=@$SLIDE $URL/v1/slides   # an upload; add -F mpp=0.25 for a slide without MPP
  curl $URL/v1/slides/ID            # status, progress, and the slide call when done
  curl -o tiles.geojson $URL/v1/slides/ID/geojson
  curl -o tiles.csv $URL/v1/slides/ID/tiles.csv
  curl -o heatmap_TUM.png $URL/v1/slides/ID/heatmap/TUM
The results of the prediction above, read-only in the same viewer: .venv/bin/saganet view $OUT --port 8001

Viewer (the slides, their heatmaps and tile calls in a browser): $URL/
MSG
exec .venv/bin/python -m saganet.serve --model models/demo-crc7 --port "$PORT" --slide-root .cache/demo \
    --state-dir runs/serve-state
