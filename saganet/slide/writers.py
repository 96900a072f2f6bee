"""What slide prediction writes: a tile table (CSV), QuPath GeoJSON, heatmaps, report.json.

Tables and GeoJSON stream row by row to a temporary name and are renamed when complete, so an
interrupted run never leaves a file that looks finished.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import StreamedFile, atomic_write, atomic_write_text


# zlib level of the slide PNGs: level 1 encodes 5x faster than PIL's default 6 and the files are
# about 1.3x larger; the encoding was half of the driver's time per slide on a small slide.
PNG_LEVEL = 1


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


class TileTable(StreamedFile):
    """tiles.csv: x, y (level-0 top-left), level (always 0), size (level-0 px), valid_fraction,
    prob_<class>..., predicted."""

    def __init__(self, path: Path, class_names):
        super().__init__(path)
        self.classes = list(class_names)
        self.w = csv.writer(self.f)
        self.w.writerow(["x", "y", "level", "size", "valid_fraction", *[f"prob_{c}" for c in self.classes], "predicted"])

    def write(self, x, y, size, valid, probs) -> None:
        self.w.writerow([x, y, 0, size, f"{valid:.4f}", *[f"{p:.6f}" for p in probs], self.classes[int(np.argmax(probs))]])


# One colour per class (tab10), as [r, g, b]: QuPath's classes, the viewer's class map and its legend.
def class_colours(n: int) -> list[list[int]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [[int(255 * v) for v in cmap(i % 10)[:3]] for i in range(n)]


def colormap_rgb(name: str, values) -> np.ndarray:
    """uint8 RGB of values in 0..1 under a matplotlib colour map (heatmaps: magma; valid fraction: viridis)."""
    import matplotlib

    return (matplotlib.colormaps[name](np.asarray(values, np.float64))[..., :3] * 255.0 + 0.5).astype(np.uint8)


class GeoJSONWriter(StreamedFile):
    """QuPath-compatible FeatureCollection: one tile object per tile, classified by its most
    probable class, with every class probability and the valid fraction as measurements."""

    def __init__(self, path: Path, class_names):
        super().__init__(path)
        self.classes = list(class_names)
        self.colours = class_colours(len(self.classes))
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


LEGEND_HEIGHT = 52  # px of the band under each heatmap: title, colour bar, scale
LEGEND_MIN_WIDTH = 360


def legend_band(width: int, title: str, cmap: str) -> Image.Image:
    """A white band with `title` and a 0..1 colour bar of `cmap`, so a heatmap says what its colours mean."""
    from PIL import ImageDraw, ImageFont

    band = Image.new("RGB", (width, LEGEND_HEIGHT), "white")
    draw = ImageDraw.Draw(band)
    font = ImageFont.load_default(size=12)
    draw.text((6, 3), title, fill=(0, 0, 0), font=font)
    bar_w = max(32, min(256, width - 24))
    bar = colormap_rgb(cmap, np.linspace(0.0, 1.0, bar_w))
    band.paste(Image.fromarray(np.repeat(bar[None], 12, axis=0)), (6, 21))
    draw.rectangle((5, 20, 6 + bar_w, 33), outline=(0, 0, 0))
    for value in (0.0, 0.5, 1.0):
        x = 6 + int(round(value * (bar_w - 1)))
        draw.line((x, 33, x, 36), fill=(0, 0, 0))
        label = f"{value:g}"
        draw.text((min(max(0, x - draw.textlength(label, font=font) / 2), width - 20), 37), label, fill=(0, 0, 0), font=font)
    return band


def write_heatmaps(out_dir: Path, thumb: np.ndarray, dimensions: tuple[int, int], grid, probs: np.ndarray,
                   class_names, model: str = "") -> dict[str, str]:
    """heatmap_<class>.png: the class probability of each tile (magma colour map, 0..1) blended over
    the grey thumbnail, where no tile was predicted the thumbnail shows through; below it a legend
    band with the class, the model and the colour bar. The top-left thumbnail-sized part is the map."""
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
    width = max(tw, LEGEND_MIN_WIDTH)
    written = {}
    for k, name in enumerate(class_names):
        value = np.where(tile >= 0, probs[np.maximum(tile, 0), k] if len(probs) else 0.0, 0.0)
        colour = cmap(value)[..., :3].astype(np.float32) * 255.0
        rgb = np.where(covered, 0.35 * grey + 0.65 * colour, grey)
        image = Image.new("RGB", (width, th + LEGEND_HEIGHT), "white")
        image.paste(Image.fromarray(rgb.clip(0, 255).astype(np.uint8)), (0, 0))
        title = f"P({name}) per tile, 0 to 1" + (f"  |  model {model}" if model else "")
        image.paste(legend_band(width, title, "magma"), (0, th))
        path = out_dir / f"heatmap_{file_part(name)}.png"
        atomic_write(path, lambda p: image.save(p, format="PNG", compress_level=PNG_LEVEL))
        written[name] = path.name
    return written


def file_part(name: str, default: str = "class") -> str:
    """A name (class, slide stem) as a file-name part: letters, digits, '-', '_', '.' only."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or default
