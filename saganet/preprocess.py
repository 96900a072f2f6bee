"""Preprocessing shared by training, evaluation and inference: scale, stain, valid-area mask, normalise."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from .stain import reinhard_normalize
from .config import MaskConfig
from .tissue import valid_area_mask


@dataclass(frozen=True)
class Preprocessing:
    scale: float = 1.0  # resize factor applied to every image before anything else
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel, of RGB in [0,1]
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    mask: MaskConfig = field(default_factory=MaskConfig)
    stain_target: dict | None = None  # Reinhard LAB target; None = no stain normalisation

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        d = dict(d)
        d["mask"] = MaskConfig.from_dict(d.get("mask"))
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """Scale and (optionally) stain-normalise a uint8 RGB image."""
        if self.scale != 1.0:
            h, w = rgb.shape[:2]
            size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        if self.stain_target is not None:
            rgb = reinhard_normalize(rgb, self.stain_target)
        return rgb

    def prepare(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (processed uint8 RGB, boolean valid-area mask of the same size). A given mask is resized."""
        out = self.image(rgb)
        if mask is None:
            m = valid_area_mask(out, self.mask)
        else:
            m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(out.shape[1::-1], Image.NEAREST)) > 127
        return out, m

    def to_array(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H,W,3) or (N,H,W,3) -> normalised float32 (N,3,H,W): what every model sees."""
        x = np.asarray(rgb)
        x = x[None] if x.ndim == 3 else x
        return self.normalise(x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0))

    def to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.to_array(rgb))

    def normalise(self, rgb01):
        """(N,3,H,W) float32 RGB in [0,1], numpy or torch -> (x - mean) / std per channel.

        The one normalisation of training, evaluation, pretraining and the engines (csrc/engine/preprocess.cpp
        computes the same float32 operations in the same order, so the bits agree)."""
        mean = np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, 3, 1, 1)
        if isinstance(rgb01, torch.Tensor):
            mean, std = torch.from_numpy(mean).to(rgb01.device), torch.from_numpy(std).to(rgb01.device)
        return (rgb01 - mean) / std


def prepare_images(images, prep: Preprocessing, given_masks=None, names=None):
    """Scale/stain/mask every image; `names` (file paths) make errors say which image failed."""
    out_images, out_masks = [], []
    for i, im in enumerate(images):
        try:
            a, m = prep.prepare(im, None if given_masks is None else given_masks[i])
        except ValueError as e:
            raise ValueError(f"{names[i] if names else f'image {i}'}: {e}") from None
        out_images.append(a)
        out_masks.append(m)
    return out_images, out_masks


def channel_stats(images) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of RGB in [0,1] over images (an iterable of uint8 arrays, any shape
    ending in 3; pixels weighted equally), streamed: one image in float64 at a time."""
    s = np.zeros(3)
    s2 = np.zeros(3)
    n = 0
    for im in images:
        x = im.reshape(-1, 3).astype(np.float64) / 255.0
        s += x.sum(0)
        s2 += (x * x).sum(0)
        n += x.shape[0]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 1e-8))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
