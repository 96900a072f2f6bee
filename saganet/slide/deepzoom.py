"""Deep-zoom pyramids of slides and plain images for the browser viewer (OpenSlide's DeepZoomGenerator).

Slides go through OpenSlide; plain PNG/JPEG/TIFF images through OpenSlide's ImageSlide, after the same
pixel limit as the pipeline's ImageReader (an image is decoded whole on its first tile).
"""
from __future__ import annotations

import io
from pathlib import Path

from .reader import MAX_PLAIN_PIXELS, PLAIN_SUFFIXES, SlideError, is_slide, open_slide

TILE_SIZE = 254  # + 1 px overlap on each side = 256 px tiles, the usual deep-zoom choice
OVERLAP = 1
JPEG_QUALITY = 80


class DeepZoom:
    """An open slide as a deep-zoom pyramid; `tile()` gives JPEG bytes. Safe to share between threads
    (OpenSlide reads are thread-safe; DeepZoomGenerator keeps no per-call state)."""

    def __init__(self, path):
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        self.path = Path(path)
        if is_slide(self.path):
            self.slide = open_slide(self.path)
        elif self.path.suffix.lower() in PLAIN_SUFFIXES:
            self.slide = _image_slide(self.path)
        else:
            self.slide = open_slide(self.path)  # any other format OpenSlide detects, or a SlideError
        try:
            self.mpp = float(self.slide.properties.get(openslide.PROPERTY_NAME_MPP_X))
        except (TypeError, ValueError):
            self.mpp = None
        self.generator = DeepZoomGenerator(self.slide, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)
        self.levels = self.generator.level_count
        self.dimensions = tuple(self.slide.dimensions)

    def dzi(self) -> str:
        return self.generator.get_dzi("jpeg")

    def tile_count(self, level: int) -> tuple[int, int]:
        return self.generator.level_tiles[level]

    def tile(self, level: int, col: int, row: int) -> bytes:
        """JPEG of tile (col, row) of deep-zoom `level`; ValueError when it does not exist."""
        if not 0 <= level < self.levels:
            raise ValueError(f"level {level} does not exist (levels 0..{self.levels - 1})")
        cols, rows = self.tile_count(level)
        if not (0 <= col < cols and 0 <= row < rows):
            raise ValueError(f"tile {col}_{row} does not exist at level {level} ({cols} x {rows} tiles)")
        try:
            image = self.generator.get_tile(level, (col, row))
        except Exception as e:  # OpenSlideError on a corrupt region
            raise SlideError(f"{self.path}: cannot read deep-zoom tile {level}/{col}_{row} ({e})") from None
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()

    def close(self) -> None:
        self.slide.close()


def _image_slide(path: Path):
    import warnings

    from openslide import ImageSlide
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours
            with Image.open(path) as im:
                w, h = im.size
        if w * h > MAX_PLAIN_PIXELS:
            raise SlideError(f"{path}: {w}x{h} is over the {MAX_PLAIN_PIXELS:,}-pixel limit for plain images; "
                             f"convert it to a pyramid TIFF")
        return ImageSlide(str(path))
    except SlideError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise SlideError(f"{path}: cannot read image ({e})") from None
