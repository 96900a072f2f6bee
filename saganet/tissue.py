"""Valid-area mask: which pixels of an H&E image are diagnostically usable.

A pixel is valid when it is (1) tissue, not glass or fat (optical density above a floor),
(2) in focus (local gradient energy above a floor), and (3) near cells (local density of
haematoxylin-stained nuclei above a floor). A threshold on haematoxylin alone marks about half of
every cell-dense image and separates nothing; the three criteria together reject glass, fat,
blur, and acellular debris or mucin, which are what the masking mechanism must keep the network away from.

The same function serves training, evaluation and slide inference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects


@dataclass(frozen=True)
class MaskConfig:
    """Knobs of `valid_area_mask`. Distances are in pixels of the image the mask is computed on."""

    tissue_od: float = 0.3  # summed RGB optical density below this is glass or fat
    focus_window: int = 15  # window (px) over which gradient energy is averaged
    focus_min: float = 0.004  # mean squared gradient (grey in [0,1]) below this is blur or flat
    nuclei_threshold: str | float = 0.05  # haematoxylin OD threshold: a number, or "otsu"
    cell_window: int = 21  # window (px) over which nuclear density is measured
    cell_density_min: float = 0.05  # fraction of nuclear pixels in the window needed to count as cellular
    min_region: int = 64  # connected valid/invalid regions smaller than this (px) are cleaned up

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "MaskConfig":
        return cls(**(d or {}))


_OD_TABLE = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"valid_area_mask expects an (H, W, 3) RGB array, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"valid_area_mask expects uint8 RGB, got dtype {rgb.dtype}")
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise ValueError(f"valid_area_mask needs an image of at least 2x2 pixels, got {rgb.shape[:2]}")
    return rgb


def tissue_pixels(rgb: np.ndarray, tissue_od: float) -> np.ndarray:
    """Summed optical density above `tissue_od`: tissue, not glass or fat. The densities come from a
    table of correctly rounded values, so that the C++ preprocessing (csrc/preprocess.cpp) gets the
    same bits; +1/256 keeps the log finite on black pixels."""
    od = _OD_TABLE[rgb]
    return (od[..., 0] + od[..., 1]) + od[..., 2] > np.float32(tissue_od)


def mask_components(rgb: np.ndarray, config: MaskConfig = MaskConfig()) -> dict[str, np.ndarray]:
    """The three criteria as separate boolean maps (for inspection and tests), plus `valid`."""
    rgb = _check_rgb(rgb)
    rgbf = rgb.astype(np.float32) / 255.0
    tissue = tissue_pixels(rgb, config.tissue_od)

    grey = rgbf @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gy, gx = np.gradient(grey)
    energy = ndimage.uniform_filter(gx * gx + gy * gy, size=config.focus_window, mode="reflect")
    focus = energy > np.float32(config.focus_min)

    haem = rgb2hed(rgb)[..., 0]
    if config.nuclei_threshold == "otsu":
        thr = threshold_otsu(haem) if np.ptp(haem) > 0 else np.inf
    else:
        thr = float(config.nuclei_threshold)
    nuclei = haem > thr
    density = ndimage.uniform_filter(nuclei.astype(np.float32), size=config.cell_window, mode="reflect")
    cellular = density > np.float32(config.cell_density_min)

    valid = tissue & focus & cellular
    if config.min_region > 0:
        valid = remove_small_objects(valid, max_size=config.min_region)
        valid = remove_small_holes(valid, max_size=config.min_region)
    return {"tissue": tissue, "focus": focus, "cellular": cellular, "valid": valid}


def valid_area_mask(rgb: np.ndarray, config: MaskConfig = MaskConfig()) -> np.ndarray:
    """Boolean (H, W) mask of the diagnostically usable pixels of a uint8 RGB H&E image."""
    return mask_components(rgb, config)["valid"]
