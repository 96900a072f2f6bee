"""Valid-area mask: which pixels of an H&E image are diagnostically usable.

A pixel is valid when it is (1) tissue, not glass or fat (optical density above a floor),
(2) in focus (local gradient energy above a threshold), and (3) near cells (local density of
haematoxylin-stained nuclei above a floor).

The focus threshold adapts to the image: gradient energy per pixel falls with the square of the
magnification (a 2x larger image of the same tissue has a quarter of the energy), so a fixed floor
tuned at one magnification marks nearly nothing in focus at four times it. The threshold is
`focus_relative` times the image's own 75th percentile of tissue energy (what "sharp" means in this
image), capped above by `focus_min` (the floor calibrated on the shared sets at 0.5-2 um/px) and
held below by `focus_floor` (so a uniformly blurred image is still rejected, down to a quarter of the
calibrated sharpness: 4x magnification). `focus_relative=0` is the fixed floor of bundles made before
this existed. A threshold on haematoxylin alone marks about half of
every cell-dense image and separates nothing; the three criteria together reject glass, fat,
blur, and acellular debris or mucin, which are what the masking mechanism must keep the network away from.

The same function serves training, evaluation and slide inference.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from .config import MaskConfig


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
    table of correctly rounded values, so that the C++ preprocessing (csrc/engine/preprocess.cpp) gets the
    same bits; +1/256 keeps the log finite on black pixels."""
    od = _OD_TABLE[rgb]
    return (od[..., 0] + od[..., 1]) + od[..., 2] > np.float32(tissue_od)


FOCUS_PERCENTILE = 0.75


def focus_threshold(energy: np.ndarray, tissue: np.ndarray, config: MaskConfig) -> np.float32:
    """The gradient-energy threshold of an image (float32, as csrc/engine/preprocess.cpp computes it).

    The percentile is a rank (the k-th smallest tissue energy, k = floor(0.75 (n - 1))) rather than an
    interpolation, so that C++ gets the same bits with nth_element."""
    fixed = np.float32(config.focus_min)
    if config.focus_relative <= 0:
        return fixed
    values = energy[tissue]
    ref = np.float32(0.0)
    if values.size:
        k = int(FOCUS_PERCENTILE * (values.size - 1))
        ref = np.partition(values, k)[k]
    relative = np.float32(config.focus_relative) * ref
    return max(np.float32(config.focus_floor), min(fixed, relative))


def mask_components(rgb: np.ndarray, config: MaskConfig = MaskConfig()) -> dict[str, np.ndarray]:
    """The three criteria as separate boolean maps (for inspection and tests), plus `valid`."""
    rgb = _check_rgb(rgb)
    rgbf = rgb.astype(np.float32) / 255.0
    tissue = tissue_pixels(rgb, config.tissue_od)

    # Explicit products and sums in a fixed order (csrc/engine/preprocess.cpp does the same): a matmul lets
    # BLAS choose fused multiply-adds and summation order, and the bits would rest on that choice.
    grey = (rgbf[..., 0] * np.float32(0.299) + rgbf[..., 1] * np.float32(0.587)) + rgbf[..., 2] * np.float32(0.114)
    gy, gx = np.gradient(grey)
    energy = ndimage.uniform_filter(gx * gx + gy * gy, size=config.focus_window, mode="reflect")
    focus = energy > focus_threshold(energy, tissue, config)

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
