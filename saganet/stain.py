"""Stain handling: HED stain jitter (augmentation) and Reinhard normalisation (optional).

Reinhard is chosen over Macenko because it has no failure mode on tiles with little stain
(Macenko's eigen-decomposition needs enough stained pixels) and is a few lines over skimage's LAB.
"""
from __future__ import annotations

import numpy as np
from skimage.color import hed2rgb, lab2rgb, rgb2hed, rgb2lab


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.01) -> np.ndarray:
    """Scale and shift each of the H, E, D channels a little: mimics stain variation between labs."""
    hed = rgb2hed(rgb)
    alpha = rng.uniform(1 - sigma, 1 + sigma, size=3)
    beta = rng.uniform(-bias, bias, size=3)
    out = hed2rgb(hed * alpha + beta)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = rgb2lab(rgb).reshape(-1, 3)
    return lab.mean(0), lab.std(0) + 1e-6


def reinhard_target(images: list[np.ndarray]) -> dict:
    """Target LAB mean/std: the average over the given (training) images."""
    stats = [lab_stats(im) for im in images]
    return {"mean": np.mean([s[0] for s in stats], 0).tolist(), "std": np.mean([s[1] for s in stats], 0).tolist()}


def reinhard_normalize(rgb: np.ndarray, target: dict) -> np.ndarray:
    mean, std = lab_stats(rgb)
    lab = rgb2lab(rgb)
    lab = (lab - mean) / std * np.asarray(target["std"]) + np.asarray(target["mean"])
    return (np.clip(lab2rgb(lab), 0, 1) * 255 + 0.5).astype(np.uint8)
