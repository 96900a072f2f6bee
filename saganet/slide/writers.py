"""What slide prediction writes: a tile table (CSV), QuPath GeoJSON, heatmaps, report.json.

Tables and GeoJSON stream row by row to a temporary name and are renamed when complete, so an
interrupted run never leaves a file that looks finished.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_write, atomic_write_text


# zlib level of the slide PNGs: level 1 encodes 5x faster than PIL's default 6 and the files are
# about 1.3x larger; the encoding was half of the driver's time per slide on a small slide.
PNG_LEVEL = 1


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


class _Streamed:
    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.f = open(self.tmp, "w", newline="", encoding="utf-8")

    def close(self, complete: bool) -> None:
        self.f.close()
        if complete:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class TileTable(_Streamed):
    """tiles.csv: x, y (level-0 top-left), level (always 0), size (level-0 px), valid_fraction,
    prob_<class>..., predicted."""

    def __init__(self, path: Path, class_names):
        super().__init__(path)
        self.classes = list(class_names)
        self.w = csv.writer(self.f)
        self.w.writerow(["x", "y", "level", "size", "valid_fraction", *[f"prob_{c}" for c in self.classes], "predicted"])

    def write(self, x, y, size, valid, probs) -> None:
        self.w.writerow([x, y, 0, size, f"{valid:.4f}", *[f"{p:.6f}" for p in probs], self.classes[int(np.argmax(probs))]])


# One colour per class for QuPath (tab10), as [r, g, b].
def _class_colours(n: int) -> list[list[int]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [[int(255 * v) for v in cmap(i % 10)[:3]] for i in range(n)]


class GeoJSONWriter(_Streamed):
    """QuPath-compatible FeatureCollection: one tile object per tile, classified by its most
    probable class, with every class probability and the valid fraction as measurements."""

    def __init__(self, path: Path, class_names):
        super().__init__(path)
        self.classes = list(class_names)
        self.colours = _class_colours(len(self.classes))
        self.f.write('{"type": "FeatureCollection", "features": [\n')
        self.first = True

    def write(self, x, y, size, valid, probs) -> None:
        k = int(np.argmax(probs))
        feature = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]]},
            "properties": {"objectType": "tile", "isLocked": True,
                           "classification": {"name": self.classes[k], "color": self.colours[k]},
                           "measurements": {**{f"prob {c}": round(float(p), 6) for c, p in zip(self.classes, probs)},
                                            "valid fraction": round(float(valid), 4)}},
        }
        self.f.write(("" if self.first else ",\n") + json.dumps(feature))
        self.first = False

    def close(self, complete: bool) -> None:
        self.f.write("\n]}\n")
        super().close(complete)


def write_heatmaps(out_dir: Path, thumb: np.ndarray, dimensions: tuple[int, int], grid, probs: np.ndarray,
                   class_names) -> dict[str, str]:
    """heatmap_<class>.png: the class probability of each tile (magma colour map, 0..1) blended over
    the grey thumbnail; where no tile was predicted the thumbnail shows through."""
    import matplotlib

    cmap = matplotlib.colormaps["magma"]
    th, tw = thumb.shape[:2]
    w0, h0 = dimensions
    # The tile under each thumbnail pixel (-1: none), from the pixel centre in level-0 coordinates.
    cols = np.minimum(((np.arange(tw) + 0.5) * w0 / tw / grid.size0).astype(np.int64), grid.cols)
    rows = np.minimum(((np.arange(th) + 0.5) * h0 / th / grid.size0).astype(np.int64), grid.rows)
    tile_of_cell = -np.ones((grid.rows + 1, grid.cols + 1), np.int64)
    if len(grid.cells):
        tile_of_cell[grid.cells[:, 1], grid.cells[:, 0]] = np.arange(len(grid.cells))
    tile = tile_of_cell[rows[:, None], cols[None, :]]
    covered = (tile >= 0)[..., None]
    grey = np.asarray(Image.fromarray(thumb).convert("L").convert("RGB"), np.float32)
    written = {}
    for k, name in enumerate(class_names):
        value = np.where(tile >= 0, probs[np.maximum(tile, 0), k] if len(probs) else 0.0, 0.0)
        colour = cmap(value)[..., :3].astype(np.float32) * 255.0
        rgb = np.where(covered, 0.35 * grey + 0.65 * colour, grey)
        path = out_dir / f"heatmap_{file_part(name)}.png"
        image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
        atomic_write(path, lambda p: image.save(p, format="PNG", compress_level=PNG_LEVEL))
        written[name] = path.name
    return written


def file_part(name: str, default: str = "class") -> str:
    """A name (class, slide stem) as a file-name part: letters, digits, '-', '_', '.' only."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or default
