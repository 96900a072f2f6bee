"""SagaNet assembled from its parts; the variants are plain data."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .backbone import ResNet, backbone_config
from .gate import GateMaskPool
from .head import LengthHead, LinearHead
from ..config import VARIANTS, ModelConfig


def variant_config(variant: str, **overrides) -> ModelConfig:
    """A variant's switches, then any ModelConfig field; `loss` may be a dict of LossConfig fields
    that change only those fields of the variant's loss."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    cfg = ModelConfig(**VARIANTS[variant])
    if isinstance(overrides.get("loss"), dict):
        overrides["loss"] = replace(cfg.loss, **overrides["loss"])
    return replace(cfg, **overrides)


class SagaNet(nn.Module):
    """image (B,3,H,W) normalised, mask (B,1,H,W) in [0,1] -> dict with `scores` (B,K) and more.

    `scores` are class-vector lengths (length head) or logits (linear head); `probs` are
    comparable across variants (lengths normalised to sum 1, or softmax of logits).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = ResNet(backbone_config(config.backbone))
        c = self.backbone.out_channels
        self.pool = GateMaskPool(c, config.use_gate, config.use_mask, config.mask_floor)
        if config.head == "length":
            self.head = LengthHead(c, config.num_classes, config.capsule_dim, config.dropout)
        elif config.head == "linear":
            self.head = LinearHead(c, config.num_classes, config.dropout)
        else:
            raise ValueError(f"unknown head {config.head!r}; use 'length' or 'linear'")

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feats = self.backbone(image)
        z, gate, m = self.pool(feats, mask)
        out = self.head(z)
        s = out["scores"]
        out["probs"] = s / s.sum(dim=1, keepdim=True).clamp_min(1e-8) if self.config.head == "length" else s.softmax(dim=1)
        out.update(gate=gate, mask=m, has_gate=self.config.use_gate, embedding=z)
        return out
