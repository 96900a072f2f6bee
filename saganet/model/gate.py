"""Masking mechanism: learned spatial gate times valid-area mask, fused with average pooling.

    g = sigmoid(conv1x1(F)),  z = sum_hw(F * g * M) / (sum_hw(g * M) + eps)

`gate_mask_pool` is the single entry point: the fused native op (`saganet.ops`, C++/CUDA
kernels) when it is built and has a kernel for the input's device and dtype, else the pure-PyTorch
reference below, which the tests compare the native op against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

EPS = 1e-6


def gate_mask_pool_reference(features: torch.Tensor, gate_logits: torch.Tensor, mask: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """features (B,C,H,W), gate_logits (B,1,H,W), mask (B,1,H,W) in [0,1] -> z (B,C)."""
    _check_shapes(features, gate_logits, mask)
    w = torch.sigmoid(gate_logits) * mask.to(features.dtype)
    return (features * w).sum(dim=(2, 3)) / (w.sum(dim=(2, 3)) + eps)


def gate_mask_pool(features: torch.Tensor, gate_logits: torch.Tensor, mask: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """features (B,C,H,W), gate_logits (B,1,H,W), mask (B,1,H,W) in [0,1] (or bool) -> z (B,C)."""
    _check_shapes(features, gate_logits, mask)
    if ops.supports(features):
        return ops.gate_mask_pool(features, gate_logits, mask, eps)
    return gate_mask_pool_reference(features, gate_logits, mask, eps)


def _check_shapes(features, gate_logits, mask):
    if features.dim() != 4:
        raise ValueError(f"gate_mask_pool: features must be (B,C,H,W), got shape {tuple(features.shape)}")
    b, _, h, w = features.shape
    for name, t in (("gate_logits", gate_logits), ("mask", mask)):
        if tuple(t.shape) != (b, 1, h, w):
            raise ValueError(f"gate_mask_pool: {name} must be {(b, 1, h, w)}, got {tuple(t.shape)}")


def mask_to_features(mask: torch.Tensor, size: tuple[int, int], floor: float = 0.0) -> torch.Tensor:
    """Image-resolution mask (B,1,H,W) -> fraction of valid pixels under each feature cell.

    `floor` lifts invalid areas to a small weight, so a tile with no valid pixel still gets a
    defined (if weak) embedding instead of 0/eps.
    """
    m = F.adaptive_avg_pool2d(mask.float(), size)
    return floor + (1.0 - floor) * m if floor > 0 else m


class GateMaskPool(nn.Module):
    """Pool a feature map with gate and/or mask. Either can be switched off (see VARIANTS)."""

    def __init__(self, channels: int, use_gate: bool = True, use_mask: bool = True, mask_floor: float = 0.0):
        super().__init__()
        self.use_gate, self.use_mask, self.mask_floor = use_gate, use_mask, mask_floor
        self.gate = nn.Conv2d(channels, 1, 1) if use_gate else None
        if self.gate is not None:
            # Start open (g ~ 0.88) so early training sees the whole valid area.
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, 2.0)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None):
        b, _, h, w = features.shape
        if self.use_mask and mask is not None:
            m = mask_to_features(mask, (h, w), self.mask_floor).to(features.dtype)
        else:
            m = features.new_ones(b, 1, h, w)
        if self.gate is not None:
            logits = self.gate(features)
        else:
            # A constant "infinitely open" gate: sigmoid(30) == 1 in float32.
            logits = features.new_full((b, 1, h, w), 30.0)
        z = gate_mask_pool(features, logits, m)
        return z, torch.sigmoid(logits), m
