"""Length-aware loss (margin loss on class-vector lengths) and the gate/mask agreement term."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LossConfig


def margin_loss(lengths: torch.Tensor, target: torch.Tensor, m_plus=0.9, m_minus=0.1, lam=0.5) -> torch.Tensor:
    """sum_k T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2, mean over the batch."""
    t = F.one_hot(target, lengths.shape[1]).to(lengths.dtype)
    present = t * F.relu(m_plus - lengths) ** 2
    absent = lam * (1.0 - t) * F.relu(lengths - m_minus) ** 2
    return (present + absent).sum(dim=1).mean()


def agreement_loss(gate: torch.Tensor, mask: torch.Tensor, kind: str = "outside", eps: float = 1e-6) -> torch.Tensor:
    """How much the gate g disagrees with the valid-area mask M (both (B,1,h,w) in [0,1]).

    "bce" pulls g towards M everywhere; on cell-dense images (M ~ 1) that forces the gate fully open
    and leaves it nothing to select. "outside" only penalises g where M says invalid,
    -(1 - M) log(1 - g), so the gate stays free to choose among valid areas.
    """
    g = gate.clamp(eps, 1 - eps)
    m = mask.to(g.dtype)
    if kind == "bce":
        return F.binary_cross_entropy(g, m)
    if kind == "outside":
        return (-(1.0 - m) * torch.log(1.0 - g)).mean()
    raise ValueError(f"unknown agreement term {kind!r}; use 'outside' or 'bce'")


def class_loss(scores: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """The classification term alone: margin loss on lengths, or cross-entropy on logits."""
    if cfg.kind == "margin":
        return margin_loss(scores, target, cfg.m_plus, cfg.m_minus, cfg.lam)
    if cfg.kind == "ce":
        return F.cross_entropy(scores, target, label_smoothing=cfg.label_smoothing)
    raise ValueError(f"unknown loss {cfg.kind!r}; use 'margin' or 'ce'")


def gate_agreement(out: dict, cfg: LossConfig) -> torch.Tensor | None:
    """The agreement term when the model has a gate and the term is on; None otherwise. Needs no label."""
    if cfg.agreement_weight > 0 and out.get("gate") is not None and out.get("has_gate"):
        return agreement_loss(out["gate"], out["mask"], cfg.agreement)
    return None


def saganet_loss(out: dict, target: torch.Tensor, cfg: LossConfig) -> dict[str, torch.Tensor]:
    cls = class_loss(out["scores"], target, cfg)
    total = cls
    agree = gate_agreement(out, cfg)
    if agree is not None:
        total = cls + cfg.agreement_weight * agree
    else:
        agree = torch.zeros((), device=cls.device)
    return {"loss": total, "class_loss": cls.detach(), "agreement_loss": agree.detach()}
