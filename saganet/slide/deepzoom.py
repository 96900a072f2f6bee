"""Deep-zoom pyramids of slides and plain images for the browser viewer.

OpenSlide's DeepZoomGenerator lays out the pyramid and says where each tile is read from; the reads
are ours, for speed on small machines:
- alpha is composited onto white only where a region has transparent pixels (`read_rgb`'s rule);
- a read at a whole multiple of the tile's size is box-reduced (`Image.reduce`, 5x faster than the
  Lanczos `thumbnail` at 2x);
- levels no finer than an overview image are cut from it: the prediction's thumbnail.png when the
  slide has one, else the slide's smallest level read whole at open (up to OVERVIEW_MAX_PIXELS).
  Coarse tiles would otherwise each decode millions of pixels.
Plain PNG/JPEG/TIFF images go through OpenSlide's ImageSlide, after the pipeline's pixel limit.
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from .reader import MAX_PLAIN_PIXELS, PLAIN_SUFFIXES, SlideError, is_slide, open_slide, read_rgb

TILE_SIZE = 254  # + 1 px overlap on each side = 256 px tiles, the usual deep-zoom choice
OVERLAP = 1
JPEG_QUALITY = 80
OVERVIEW_MAX_PIXELS = 16_000_000  # 48 MB of RGB per open slide at most
CACHE_BYTES = 256 << 20  # OpenSlide's cache of decoded slide tiles, shared by the open slides (default 32 MB)
_cache = None


class DeepZoom:
    """An open slide as a deep-zoom pyramid; `tile()` gives JPEG bytes. Safe to share between threads
    (OpenSlide reads are thread-safe; DeepZoomGenerator keeps no per-call state)."""

    def __init__(self, path, thumbnail=None):
        """`thumbnail`: the slide's thumbnail.png from `saganet predict`, when there is one: coarse levels
        are cut from it, and the slide is not decoded whole when it opens."""
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
        if isinstance(self.slide, openslide.OpenSlide):
            global _cache
            _cache = _cache or openslide.OpenSlideCache(CACHE_BYTES)
            self.slide.set_cache(_cache)
        # An image of the whole slide that coarse levels are cut from, and its downsample (x, y).
        self._overview, self._overview_ds = self._thumbnail(thumbnail), None
        if self._overview is not None:
            self._overview_ds = (self.dimensions[0] / self._overview.width, self.dimensions[1] / self._overview.height)
        else:  # the smallest slide level, read now rather than under the first burst of tile requests
            last = self.slide.level_count - 1
            w, h = self.slide.level_dimensions[last]
            if w * h <= OVERVIEW_MAX_PIXELS:
                self._overview = Image.fromarray(self._read_level(last, w, h))
                self._overview_ds = (self.slide.level_downsamples[last],) * 2

    def _thumbnail(self, path) -> Image.Image | None:
        """The prediction's thumbnail when it is this slide's (same aspect to 2 %), else None."""
        if path is None or not Path(path).is_file():
            return None
        try:
            with Image.open(path) as im:
                if im.width * im.height > OVERVIEW_MAX_PIXELS:
                    return None
                thumb = im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        w, h = self.dimensions
        return thumb if abs((w / thumb.width) / (h / thumb.height) - 1) < 0.02 else None

    def _read_level(self, level: int, w: int, h: int) -> np.ndarray:
        """A whole level, read in horizontal strips on two threads when strips map to whole level-0
        rows (an integer downsample), else in one read."""
        ds = self.slide.level_downsamples[level]
        strips = max(1, min(8, h // 256)) if float(ds).is_integer() and isinstance(self.slide, openslide.OpenSlide) else 1
        edges = np.linspace(0, h, strips + 1).astype(int)

        def strip(i):
            return read_rgb(self.slide, self.path, 0, int(edges[i] * ds), level, w, int(edges[i + 1] - edges[i]))

        with ThreadPoolExecutor(2) as pool:
            return np.concatenate(list(pool.map(strip, range(strips))))

    def _from_overview(self, col: int, row: int, scale: float, out) -> Image.Image | None:
        """The tile cut from the in-memory overview when the deep-zoom level is no finer than it (to
        0.1 %: a slide level at 2.0005x serves the 2x deep-zoom level with its own pixels); else None."""
        if self._overview is None or scale < max(self._overview_ds) * (1 - 1e-3):
            return None
        dsx, dsy = self._overview_ds
        w, h = self._overview.size
        # The tile's top-left in deep-zoom pixels (one pixel of overlap before all but the first).
        x = round((col * TILE_SIZE - OVERLAP * (col > 0)) * scale / dsx)
        y = round((row * TILE_SIZE - OVERLAP * (row > 0)) * scale / dsy)
        span = (max(1, round(out[0] * scale / dsx)), max(1, round(out[1] * scale / dsy)))
        if x + span[0] <= w and y + span[1] <= h:
            return self._overview.crop((x, y, x + span[0], y + span[1]))
        region = Image.new("RGB", span, "white")  # beyond the slide's edge is glass, as in read_rgb
        region.paste(self._overview.crop((x, y, min(x + span[0], w), min(y + span[1], h))), (0, 0))
        return region

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
        location, slide_level, size = self.generator.get_tile_coordinates(level, (col, row))
        out = self.generator.get_tile_dimensions(level, (col, row))
        image = self._from_overview(col, row, 2 ** (self.levels - 1 - level), out)
        if image is None:
            image = Image.fromarray(read_rgb(self.slide, self.path, *location, slide_level, *size))
        if image.size != out:
            k = image.size[0] // out[0]
            if image.size == (k * out[0], k * out[1]):
                image = image.reduce(k)
            else:
                image = image.resize(out, Image.LANCZOS, reducing_gap=2.0)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()

    def close(self) -> None:
        self.slide.close()


def _image_slide(path: Path):
    """A plain image as an OpenSlide ImageSlide, decoded now: a Pillow image decodes lazily on first
    access, which is not safe from several threads at once."""
    import warnings

    from openslide import ImageSlide
    from PIL import UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours
            im = Image.open(path)
            w, h = im.size
            if w * h > MAX_PLAIN_PIXELS:
                im.close()
                raise SlideError(f"{path}: {w}x{h} is over the {MAX_PLAIN_PIXELS:,}-pixel limit for plain images; "
                                 f"convert it to a pyramid TIFF")
            im.load()
        return ImageSlide(im)
    except SlideError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SlideError(f"{path}: cannot read image ({e})") from None
