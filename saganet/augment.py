"""Augmentations shared by training, semi-supervised training and pretraining: the random crop with
its mask (numpy, per image), and batched photometric changes in torch (HED stain jitter,
brightness/contrast, Gaussian blur, cutout), batched because per-tile numpy would cost more than the
network on 2 cores.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb, rgb_from_hed

_HED_FROM_RGB = torch.tensor(hed_from_rgb, dtype=torch.float32)
_RGB_FROM_HED = torch.tensor(rgb_from_hed, dtype=torch.float32)
_LOG_ADJUST = -math.log(1e-6)  # skimage's rgb2hed scaling, so sigma/bias mean the same as stain.hed_jitter


def random_crop(image: np.ndarray, mask: np.ndarray, crop: int, rng: np.random.Generator, tries: int = 1):
    """A crop x crop window of image (H,W,3) and its mask (H,W), reflect-padded when the image is
    smaller, then a random quarter turn and flip. With tries > 1, of that many random positions the
    one with the largest valid share of the mask. Returns contiguous (crop, mask)."""
    h, w = mask.shape
    if h < crop or w < crop:
        ph, pw = max(0, crop - h), max(0, crop - w)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        mask = np.pad(mask, ((0, ph), (0, pw)), mode="reflect")
        h, w = mask.shape
    best = None
    for _ in range(tries):
        y0, x0 = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        score = mask[y0:y0 + crop, x0:x0 + crop].mean() if tries > 1 else 0.0
        if best is None or score > best[0]:
            best = (score, y0, x0)
    _, y0, x0 = best
    c, cm = image[y0:y0 + crop, x0:x0 + crop], mask[y0:y0 + crop, x0:x0 + crop]
    k = rng.integers(0, 4)
    c, cm = np.rot90(c, k), np.rot90(cm, k)
    if rng.random() < 0.5:
        c, cm = c[:, ::-1], cm[:, ::-1]
    return np.ascontiguousarray(c), np.ascontiguousarray(cm)


def hed_jitter_torch(x: torch.Tensor, gen: torch.Generator, sigma: float, bias: float = 0.01) -> torch.Tensor:
    """x (B,3,H,W) RGB in [0,1]: scale and shift H, E, D per sample (skimage's colour deconvolution)."""
    b = x.shape[0]
    od = -torch.log(x.clamp_min(1e-6)) / _LOG_ADJUST
    hed = torch.einsum("bchw,cd->bdhw", od, _HED_FROM_RGB)
    alpha = 1 + sigma * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)
    beta = bias * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)
    od = torch.einsum("bdhw,dc->bchw", hed * alpha + beta, _RGB_FROM_HED)
    return torch.exp(-od * _LOG_ADJUST).clamp(0, 1)


def brightness_contrast(x: torch.Tensor, gen: torch.Generator, brightness: float = 0.15,
                        contrast: float = 0.2) -> torch.Tensor:
    """Per-sample brightness and contrast change of x (B,3,H,W) in [0,1]."""
    b = x.shape[0]
    bright = 1 + brightness * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    contr = 1 + contrast * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    mu = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mu) * contr + mu * bright).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur; sigma (B,) in pixels, 0 = unchanged."""
    b, c, h, w = x.shape
    r = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-(r[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 5)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="reflect"), k.view(b * c, 1, 1, 5), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="reflect"), k.view(b * c, 1, 5, 1), groups=b * c)
    return y.view(b, c, h, w)


def random_blur(x: torch.Tensor, gen: torch.Generator, p: float) -> torch.Tensor:
    """Blur each sample with probability p, sigma uniform in 0.1-1.0 px."""
    b = x.shape[0]
    sigma = torch.where(torch.rand(b, generator=gen) < p, 0.1 + 0.9 * torch.rand(b, generator=gen), torch.zeros(b))
    return gaussian_blur(x, sigma)


def cutout(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, fraction: float = 0.5):
    """Blank one random square (side = fraction of the edge) per sample to white, as glass would look,
    and mark it invalid in mask (B,1,H,W): the strong view must not claim evidence that is not there."""
    b, _, h, w = x.shape
    s = max(1, int(round(fraction * min(h, w))))
    ys = torch.randint(0, h - s + 1, (b,), generator=gen)
    xs = torch.randint(0, w - s + 1, (b,), generator=gen)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    hole = ((rows >= ys.view(b, 1, 1)) & (rows < (ys + s).view(b, 1, 1)) &
            (cols >= xs.view(b, 1, 1)) & (cols < (xs + s).view(b, 1, 1))).unsqueeze(1)
    return x.masked_fill(hole, 1.0), mask.masked_fill(hole, 0.0)
