"""Length-aware head: K class vectors of dimension D, squashed, class score = vector length."""
from __future__ import annotations

import torch
from torch import nn


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """v = |s|^2 / (1 + |s|^2) * s / |s|: keeps direction, maps length into [0, 1)."""
    sq = (s * s).sum(dim=dim, keepdim=True)
    return s * (sq / (1.0 + sq)) / torch.sqrt(sq + eps)


class LengthHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dim: int = 16, dropout: float = 0.0):
        super().__init__()
        self.num_classes, self.dim = num_classes, dim
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(in_features, num_classes * dim)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        v = squash(self.proj(self.drop(z)).view(z.shape[0], self.num_classes, self.dim))
        lengths = v.norm(dim=-1)
        return {"scores": lengths, "lengths": lengths, "vectors": v}


class LinearHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": self.fc(self.drop(z))}
