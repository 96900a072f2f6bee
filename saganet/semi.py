"""Semi-supervised training on unlabelled images: FixMatch (Sohn et al., NeurIPS 2020).

Why FixMatch: it is one loss term with two knobs (confidence threshold, unlabelled ratio), needs no
extra network (2 cores), and is the standard baseline of semi-supervised image classification.
Histology work builds on the same consistency idea with stain augmentations (e.g. Srinidhi et al.,
Medical Image Analysis 2022, teacher-student consistency on histology patches); docs/results.md
records what it buys here. Per step, each unlabelled crop is seen twice: a weak view (the
crop, flipped and rotated) gives a pseudo-label when the model is confident; the loss trains the
model to give that label to a strong view of the same crop (stronger HED stain jitter, brightness,
contrast, blur and cutout).

How the mask and the gate take part:
- unlabelled crops are drawn where the valid-area mask is: of a few random positions, the one with
  the largest valid share, so that glass and blur do not make pseudo-labels;
- cutout blanks a square to white (glass) and marks it invalid in the strong view's mask;
- the gate/mask agreement term needs no label and is applied to every strong view.

Confidence: for a linear head, the top softmax probability (FixMatch's 0.95); for the length head,
whose lengths are independent and not a distribution, the gap between the longest and the second
longest class vector (0.5 by default: one class well above the others).
"""
from __future__ import annotations

import numpy as np
import torch

from .augment import brightness_contrast, cutout, hed_jitter_torch, random_blur, random_crop
from .config import LossConfig
from .model.loss import class_loss, gate_agreement

METHODS = ("fixmatch",)  # trained inside train.fit; "selftrain" (saganet/selftrain.py) wraps fit instead
DEFAULT_THRESHOLD = {"linear": 0.95, "length": 0.5}
CROP_TRIES = 4  # random positions tried per unlabelled crop; the one with the most valid area wins


def pseudo_labels(out: dict, head: str, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, confident) from a weak-view forward pass: argmax, and whether confidence >= threshold."""
    scores = out["scores"].detach()
    if head == "linear":
        conf, labels = scores.softmax(dim=1).max(dim=1)
    elif head == "length":
        top2 = scores.topk(min(2, scores.shape[1]), dim=1)
        labels = top2.indices[:, 0]
        conf = top2.values[:, 0] - (top2.values[:, 1] if scores.shape[1] > 1 else 0.0)
    else:
        raise ValueError(f"unknown head {head!r}")
    return labels, conf >= threshold


def valid_crops(images, masks, idx, crop: int, rng: np.random.Generator):
    """Weak views: for each image index a crop at the most valid of CROP_TRIES random positions
    (reflect-padded when the image is smaller), a random 90-degree rotation and flip.
    Returns uint8 crops (B, crop, crop, 3) and float masks (B, 1, crop, crop)."""
    xs, ms = [], []
    for i in idx:
        c, cm = random_crop(images[i], masks[i], crop, rng, tries=CROP_TRIES)
        xs.append(c)
        ms.append(cm)
    return np.stack(xs), torch.from_numpy(np.stack(ms)).unsqueeze(1).float()


def strong_view(crops_uint8: np.ndarray, masks: torch.Tensor, gen: torch.Generator, hed_sigma: float):
    """The strong view of weak crops: stain jitter, brightness/contrast, blur, cutout. RGB in [0,1]."""
    x = torch.from_numpy(crops_uint8).permute(0, 3, 1, 2).float().div_(255.0)
    x = hed_jitter_torch(x, gen, hed_sigma)
    x = brightness_contrast(x, gen, brightness=0.3, contrast=0.4)
    x = random_blur(x, gen, p=0.5)
    return cutout(x, masks, gen)


def fixmatch_loss(model, prep, images, masks, idx, crop: int, rng: np.random.Generator, gen: torch.Generator,
                  loss_cfg: LossConfig, threshold: float, hed_sigma: float) -> dict[str, torch.Tensor]:
    """FixMatch's unlabelled term on the images `idx` of (images, masks): class loss on confident
    strong views (averaged over all unlabelled views, as in the paper) plus the gate agreement term."""
    weak, m = valid_crops(images, masks, idx, crop, rng)
    with torch.no_grad():
        labels, keep = pseudo_labels(model(prep.to_tensor(weak), m), model.config.head, threshold)
    x, m_strong = strong_view(weak, m, gen, hed_sigma)
    out = model(prep.normalise(x), m_strong)
    total = torch.zeros(())
    if keep.any():
        total = class_loss(out["scores"][keep], labels[keep], loss_cfg) * keep.float().mean()
    agree = gate_agreement(out, loss_cfg)
    if agree is not None:
        total = total + loss_cfg.agreement_weight * agree
    return {"loss": total, "confident": keep.float().mean(), "pseudo_labels": labels[keep]}
