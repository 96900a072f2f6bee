"""Whole slides: reading (OpenSlide and plain images), the tile grid, the prediction pipeline and
its writers, kept apart from models and engines (as in TIAToolbox)."""
from .reader import (Reader, SlideError, is_slide, open_reader, open_slide, read_rgb, thumbnail_tissue,
                     tissue_thumbnail_mask, tissue_tiles)

__all__ = ["Reader", "SlideError", "is_slide", "open_reader", "open_slide", "read_rgb",
           "thumbnail_tissue", "tissue_thumbnail_mask", "tissue_tiles"]
