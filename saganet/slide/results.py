"""Reading back what slide prediction wrote (report.json, tiles.csv) for the viewer: the tile under a
point, and the per-tile layers (class map, class probability, valid fraction) as images aligned with
the tile grid."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .writers import class_colours, colormap_rgb

MAX_LAYER_SIDE = 4096  # longer side of a layer image; each tile is a square of whole pixels within it
MAX_CELL_PX = 16  # enough for crisp tile edges once the browser scales the layer up


@dataclass(frozen=True)
class SlideResult:
    """One slide's outputs: the report and the tile table as arrays, with the grid they came from."""

    report: dict
    classes: list[str]
    x: np.ndarray  # (N,) level-0 top-left of each tile
    y: np.ndarray
    size: int  # tile edge in level-0 px (as written)
    valid: np.ndarray  # (N,) valid fraction
    probs: np.ndarray  # (N, K)
    cols: int
    rows: int
    size0: float  # exact tile pitch in level-0 px (the grid's, before rounding)

    @property
    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """(col, row) of each tile."""
        return (np.rint(self.x / self.size0).astype(np.int64), np.rint(self.y / self.size0).astype(np.int64))

    def tile_at(self, x: float, y: float) -> int | None:
        """Index of the tile that holds level-0 point (x, y), else None (glass, or outside the grid)."""
        col, row = int(x // self.size0), int(y // self.size0)
        if not (0 <= col < self.cols and 0 <= row < self.rows):
            return None
        cols, rows = self.cells
        hit = np.flatnonzero((cols == col) & (rows == row))
        return int(hit[0]) if len(hit) else None

    def tile(self, i: int) -> dict:
        k = int(np.argmax(self.probs[i]))
        return {"index": i, "x": int(self.x[i]), "y": int(self.y[i]), "size": self.size,
                "valid_fraction": float(self.valid[i]), "predicted": self.classes[k],
                "probs": {c: float(p) for c, p in zip(self.classes, self.probs[i])}}

    @property
    def cell_px(self) -> int:
        """Pixels per tile edge in the layer images."""
        return int(np.clip(MAX_LAYER_SIDE // max(self.cols, self.rows, 1), 1, MAX_CELL_PX))

    def layer(self, kind: str, cls: str | None = None) -> Image.Image:
        """RGBA image of `cols x rows` cells (`cell_px` each): 'class' (argmax colour), 'prob' (the
        probability of `cls`, magma 0..1) or 'valid' (valid fraction, viridis 0..1); transparent
        where no tile was predicted."""
        if kind == "class":
            colours = np.array(class_colours(len(self.classes)), np.uint8)
            rgb = colours[np.argmax(self.probs, axis=1)] if len(self.probs) else np.zeros((0, 3), np.uint8)
        elif kind == "prob":
            if cls not in self.classes:
                raise KeyError(cls)
            rgb = colormap_rgb("magma", self.probs[:, self.classes.index(cls)])
        elif kind == "valid":
            rgb = colormap_rgb("viridis", self.valid)
        else:
            raise KeyError(kind)
        grid = np.zeros((self.rows, self.cols, 4), np.uint8)
        cols, rows = self.cells
        grid[rows, cols, :3] = rgb
        grid[rows, cols, 3] = 255
        k = self.cell_px
        return Image.fromarray(np.repeat(np.repeat(grid, k, axis=0), k, axis=1), "RGBA")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def load_result(out_dir: Path) -> SlideResult:
    """The outputs of one predicted slide; ValueError naming the file when they are missing or malformed."""
    out_dir = Path(out_dir)
    report_path, table_path = out_dir / "report.json", out_dir / "tiles.csv"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        cols, rows = (int(v) for v in report["grid"])
        size0 = float(report["tile_size"]) * float(report["model_mpp"]) / float(report["mpp"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{report_path}: not a slide prediction report ({type(e).__name__}: {e})") from None
    try:
        with open(table_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            classes = [h[len("prob_"):] for h in header if h.startswith("prob_")]
            data = np.array([row[:5 + len(classes)] for row in reader], dtype=np.float64).reshape(-1, 5 + len(classes))
    except (OSError, ValueError, StopIteration) as e:
        raise ValueError(f"{table_path}: not a tile table ({type(e).__name__}: {e})") from None
    size = int(data[0, 3]) if len(data) else int(report.get("tile_size_level0", round(size0)))
    return SlideResult(report, classes, data[:, 0].astype(np.int64), data[:, 1].astype(np.int64), size,
                       data[:, 4], data[:, 5:], cols, rows, size0)
