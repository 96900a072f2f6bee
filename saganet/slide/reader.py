"""Reading slides (OpenSlide) and plain large images (Pillow) with clear errors; tissue on a thumbnail.

Pretraining and slide prediction share these readers. `open_reader` gives one interface over both
kinds: level-0 size, MPP when the file has it, a thumbnail, and square regions resampled to a size.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..config import MaskConfig
from ..data import to_rgb
from ..tissue import tissue_pixels

# Formats OpenSlide reads that are not plain images; .tif/.tiff are asked of OpenSlide itself.
SLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm"}


class SlideError(ValueError):
    """A slide that cannot be opened or read; the message names the file."""


def is_slide(path) -> bool:
    """A vendor slide format, or a TIFF that OpenSlide reads as a multi-resolution pyramid."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in {".tif", ".tiff"}:
        return False
    import openslide

    try:
        if openslide.OpenSlide.detect_format(str(p)) is None:
            return False
        with openslide.OpenSlide(str(p)) as s:
            return s.level_count > 1
    except Exception:  # unreadable: treated as an image, whose loader reports the file
        return False


def open_slide(path):
    """OpenSlide handle; unreadable or unsupported files raise SlideError naming the file."""
    import openslide

    p = Path(path)
    if not p.is_file():
        raise SlideError(f"{p}: no such slide file")
    try:
        return openslide.OpenSlide(str(p))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(f"{p}: not a slide format OpenSlide can read") from None
    except openslide.OpenSlideError as e:
        raise SlideError(f"{p}: cannot read slide ({e})") from None


def read_rgb(slide, path, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
    """uint8 RGB region; (x, y) are level-0 coordinates. Transparent pixels become white (glass)."""
    try:
        rgba = np.asarray(slide.read_region((int(x), int(y)), int(level), (int(width), int(height))))
    except Exception as e:  # OpenSlideError on a corrupt tile
        raise SlideError(f"{path}: cannot read region x={x} y={y} level={level} ({e})") from None
    alpha = rgba[..., 3]
    if alpha.min() == 255:  # the usual case: no blending, just drop alpha (cheaper than the read)
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.uint16)
    return ((rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def thumbnail_tissue(thumb: np.ndarray) -> np.ndarray:
    """Tissue (not glass) pixels of a thumbnail. Only the tissue criterion of the valid-area mask:
    focus and cell density need full resolution."""
    return tissue_pixels(thumb, MaskConfig().tissue_od)


PLAIN_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
# A plain image is decoded whole (PNG and JPEG cannot be read by region): 0.5 GB of RGB at this
# limit, which is Pillow's own decompression-bomb limit. Larger images belong in a pyramid TIFF,
# which OpenSlide reads region by region.
MAX_PLAIN_PIXELS = 178_956_970


class Reader(ABC):
    """One interface over slides and plain images. Coordinates are level-0 pixels."""

    path: Path
    dimensions: tuple[int, int]  # level-0 (width, height)
    mpp: float | None  # level-0 microns per pixel when the file says, else None
    kind: str

    @abstractmethod
    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """uint8 RGB of the whole image, its longer side at most `max_side`."""

    @abstractmethod
    def read(self, x: int, y: int, size0: int, out: int) -> np.ndarray:
        """uint8 RGB (out, out, 3) of the level-0 square [x, x+size0) x [y, y+size0)."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _resize(rgb: np.ndarray, out: int) -> np.ndarray:
    if rgb.shape[0] == out and rgb.shape[1] == out:
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((out, out), Image.BILINEAR))


class OpenSlideReader(Reader):
    kind = "openslide"

    def __init__(self, path):
        self.path = Path(path)
        self.slide = open_slide(self.path)
        self.dimensions = tuple(self.slide.dimensions)
        try:
            self.mpp = float(self.slide.properties.get("openslide.mpp-x"))
        except (TypeError, ValueError):
            self.mpp = None
        if not (self.mpp and self.mpp > 0):
            self.mpp = None

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        w, h = self.dimensions
        ds = max(w, h) / max_side if max(w, h) > max_side else 1.0
        try:
            return np.asarray(self.slide.get_thumbnail((max(1, int(w / ds)), max(1, int(h / ds)))).convert("RGB"))
        except Exception as e:
            raise SlideError(f"{self.path}: cannot read a thumbnail ({e})") from None

    def read(self, x: int, y: int, size0: int, out: int) -> np.ndarray:
        # Read from the pyramid level closest to (not finer than needed for) the output scale.
        level = self.slide.get_best_level_for_downsample(size0 / out)
        side = max(1, round(size0 / self.slide.level_downsamples[level]))
        return _resize(read_rgb(self.slide, self.path, x, y, level, side, side), out)

    def close(self) -> None:
        self.slide.close()


class ImageReader(Reader):
    kind = "image"

    def __init__(self, path):
        import warnings

        from PIL import Image, UnidentifiedImageError

        self.path = Path(path)
        self.mpp = None  # DPI tags in PNG/JPEG are screen defaults, not scanner resolution
        too_big = (f"{self.path}: over the {MAX_PLAIN_PIXELS:,}-pixel limit for plain images (they are decoded "
                   f"whole); convert it to a pyramid TIFF")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours
                with Image.open(self.path) as im:
                    if im.size[0] * im.size[1] > MAX_PLAIN_PIXELS:
                        raise SlideError(f"{too_big} ({im.size[0]}x{im.size[1]})")
                    im.load()
                    self.rgb = to_rgb(im, self.path)  # the one conversion: 16-bit scaled, alpha onto white
        except SlideError:
            raise  # already says what is wrong (a SlideError is a ValueError: keep it out of the clause below)
        except Image.DecompressionBombError:
            raise SlideError(too_big) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise SlideError(f"{self.path}: cannot read image ({e})") from None
        self.dimensions = (self.rgb.shape[1], self.rgb.shape[0])

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        from PIL import Image

        im = Image.fromarray(self.rgb)
        im.thumbnail((max_side, max_side), Image.BILINEAR)
        return np.asarray(im)

    def read(self, x: int, y: int, size0: int, out: int) -> np.ndarray:
        region = np.full((size0, size0, 3), 255, np.uint8)  # beyond the edge is glass
        part = self.rgb[max(0, y):y + size0, max(0, x):x + size0]
        region[:part.shape[0], :part.shape[1]] = part
        return _resize(region, out)


def probe(path, max_plain_pixels: int = MAX_PLAIN_PIXELS) -> None:
    """Check that `path` can be opened as a slide or image without decoding its pixels (a plain
    image's header only): what a server does at the door, before a job reads the file. A plain
    image is decoded whole by its job, so the server may hold it to a lower `max_plain_pixels`."""
    p = Path(path)
    if not p.is_file():
        raise SlideError(f"{p}: no such file")
    if is_slide(p) or p.suffix.lower() not in PLAIN_SUFFIXES:
        open_reader(p).close()  # OpenSlide reads headers and the tile directory, not the pixels
        return
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SlideError(f"{p}: cannot read image ({e})") from None
    if w * h > max_plain_pixels:
        raise SlideError(f"{p}: {w}x{h} is over the {max_plain_pixels:,}-pixel limit for plain images (they are "
                         f"decoded whole); convert it to a pyramid TIFF")


def open_reader(path) -> Reader:
    """A slide (any format OpenSlide reads) or a plain PNG/JPEG/TIFF/BMP image; else SlideError."""
    p = Path(path)
    if not p.is_file():
        raise SlideError(f"{p}: no such file")
    if is_slide(p):
        return OpenSlideReader(p)
    suffix = p.suffix.lower()
    if suffix in PLAIN_SUFFIXES:
        return ImageReader(p)
    import openslide

    try:
        detected = openslide.OpenSlide.detect_format(str(p))
    except Exception:
        detected = None
    if detected:
        return OpenSlideReader(p)
    raise SlideError(f"{p}: unsupported format {suffix or '(no suffix)'!r}; give a slide OpenSlide reads "
                     f"(.svs, .ndpi, .mrxs, pyramid TIFF, ...) or a PNG/JPEG/TIFF image")
