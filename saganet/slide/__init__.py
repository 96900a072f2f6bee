"""Whole slides: reading (OpenSlide and plain images), the tile grid, the prediction pipeline and
its writers, kept apart from models and engines (as in TIAToolbox)."""
from .reader import Reader, SlideError, is_slide, open_reader, open_slide, read_rgb, thumbnail_tissue
from .tiler import Grid, tile_grid

__all__ = ["Grid", "Reader", "SlideError", "is_slide", "open_reader", "open_slide", "read_rgb", "thumbnail_tissue",
           "tile_grid"]
