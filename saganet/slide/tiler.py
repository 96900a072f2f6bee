"""The tile grid: non-overlapping squares at the model's microns per pixel, kept where the
thumbnail shows tissue."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    tile: int  # tile edge fed to the model (px at the model's MPP)
    size0: float  # tile edge in level-0 pixels
    cols: int
    rows: int
    cells: np.ndarray  # (N, 2) int (col, row) of the tiles kept, row-major order

    def origin(self, i: int) -> tuple[int, int]:
        """Level-0 (x, y) of the top-left corner of tile i."""
        col, row = self.cells[i]
        return int(round(col * self.size0)), int(round(row * self.size0))

    @property
    def read_size(self) -> int:
        return int(round(self.size0))


def tile_grid(dimensions: tuple[int, int], slide_mpp: float, model_mpp: float, tile: int, tissue: np.ndarray,
              min_tissue: float = 0.25) -> Grid:
    """Tiles of `tile` px at `model_mpp` over a level-0 image of `dimensions` at `slide_mpp`; a tile
    is kept when at least `min_tissue` of its area is tissue on the thumbnail mask `tissue`."""
    w, h = dimensions
    size0 = tile * model_mpp / slide_mpp
    cols, rows = int(w // size0), int(h // size0)
    th, tw = tissue.shape
    sy, sx = th / h, tw / w  # thumbnail pixels per level-0 pixel
    cells = []
    for row in range(rows):
        r0 = int(row * size0 * sy)
        r1 = max(r0 + 1, int((row + 1) * size0 * sy))
        for col in range(cols):
            c0 = int(col * size0 * sx)
            c1 = max(c0 + 1, int((col + 1) * size0 * sx))
            if tissue[r0:r1, c0:c1].mean() >= min_tissue:
                cells.append((col, row))
    return Grid(tile, size0, cols, rows, np.array(cells, dtype=np.int64).reshape(-1, 2))
