"""Whole-slide reading through OpenSlide: open with clear errors, find tissue, read tiles.

Kept apart from models and inference (as in TIAToolbox) so that pretraining and slide prediction
share one reader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .tissue import MaskConfig, mask_components

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


def slide_mpp(slide, path, mpp: float | None = None) -> float:
    """Microns per pixel at level 0: an explicit value wins, else the slide's property, else an error."""
    if mpp is not None:
        if not mpp > 0:
            raise SlideError(f"{path}: microns per pixel must be positive, got {mpp}")
        return float(mpp)
    value = slide.properties.get("openslide.mpp-x")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SlideError(f"{path}: the slide has no microns-per-pixel property (openslide.mpp-x); "
                         f"pass the value explicitly (--mpp)") from None


def read_rgb(slide, path, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
    """uint8 RGB region; (x, y) are level-0 coordinates. Transparent pixels become white (glass)."""
    try:
        rgba = np.asarray(slide.read_region((int(x), int(y)), int(level), (int(width), int(height))))
    except Exception as e:  # OpenSlideError on a corrupt tile
        raise SlideError(f"{path}: cannot read region x={x} y={y} level={level} ({e})") from None
    rgb = rgba[..., :3].astype(np.float32)
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return (rgb * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def tissue_thumbnail_mask(slide, path, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """Tissue (not glass) mask of a thumbnail and the thumbnail's downsample from level 0."""
    w, h = slide.dimensions
    ds = max(w, h) / max_side if max(w, h) > max_side else 1.0
    try:
        thumb = np.asarray(slide.get_thumbnail((max(1, int(w / ds)), max(1, int(h / ds)))).convert("RGB"))
    except Exception as e:
        raise SlideError(f"{path}: cannot read a thumbnail ({e})") from None
    ds = w / thumb.shape[1]
    # Only the tissue criterion: focus and cell density need full resolution, not a thumbnail.
    return mask_components(thumb, MaskConfig(focus_min=0.0, cell_density_min=-1.0))["tissue"], ds


def tissue_tiles(slide, path, tile: int, level: int = 0, min_tissue: float = 0.5, max_tiles: int | None = None,
                 rng: np.random.Generator | None = None) -> list[tuple[int, int]]:
    """Level-0 (x, y) corners of a non-overlapping grid of `tile`-px tiles at `level` whose area is at
    least `min_tissue` tissue on the thumbnail mask; a random subset of `max_tiles` when given."""
    if level < 0 or level >= slide.level_count:
        raise SlideError(f"{path}: level {level} does not exist (the slide has {slide.level_count})")
    mask, ds = tissue_thumbnail_mask(slide, path)
    down = slide.level_downsamples[level]
    w, h = slide.level_dimensions[level]
    step0 = tile * down  # tile edge in level-0 pixels
    coords = []
    for ty in range(h // tile):
        for tx in range(w // tile):
            x0, y0 = tx * step0, ty * step0
            r0, r1 = int(y0 / ds), max(int(y0 / ds) + 1, int((y0 + step0) / ds))
            c0, c1 = int(x0 / ds), max(int(x0 / ds) + 1, int((x0 + step0) / ds))
            if mask[r0:r1, c0:c1].mean() >= min_tissue:
                coords.append((int(round(x0)), int(round(y0))))
    if max_tiles is not None and len(coords) > max_tiles:
        rng = rng or np.random.default_rng(0)
        keep = np.sort(rng.choice(len(coords), size=max_tiles, replace=False))
        coords = [coords[i] for i in keep]
    return coords
