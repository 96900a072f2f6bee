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

    def to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 (H,W,3) or (N,H,W,3) -> normalised float32 (N,3,H,W)."""
        t = torch.from_numpy(np.ascontiguousarray(rgb))
        if t.dim() == 3:
            t = t.unsqueeze(0)
        return self.normalise(t.permute(0, 3, 1, 2).float().div_(255.0))

    def normalise(self, rgb01: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) RGB in [0,1] -> normalised with the channel mean and std."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (rgb01 - mean) / std


def channel_stats(images: list[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of RGB in [0,1] over a list of images (pixels weighted equally)."""
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
