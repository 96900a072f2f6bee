import math

import pytest
import torch

from saganet.config import LossConfig
from saganet.model import agreement_loss, margin_loss, saganet_loss, squash


def test_margin_loss_hand_computed():
    lengths = torch.tensor([[0.8, 0.3, 0.05], [0.95, 0.2, 0.5]])
    target = torch.tensor([0, 2])
    # sample 0: (0.9-0.8)^2 + 0.5*(0.3-0.1)^2 + 0 = 0.01 + 0.02 = 0.03
    # sample 1: present class 2: (0.9-0.5)^2 = 0.16; absent: 0.5*(0.95-0.1)^2 + 0.5*(0.2-0.1)^2 = 0.36125 + 0.005
    expected = (0.03 + 0.16 + 0.36125 + 0.005) / 2
    assert margin_loss(lengths, target).item() == pytest.approx(expected, abs=1e-6)


def test_margin_loss_zero_when_margins_met():
    lengths = torch.tensor([[0.95, 0.05, 0.0]])
    assert margin_loss(lengths, torch.tensor([0])).item() == 0.0


def test_margin_loss_constants_are_knobs():
    lengths = torch.tensor([[0.5, 0.5]])
    # m+=0.6, m-=0.4, lam=1: (0.1)^2 + (0.1)^2 = 0.02
    assert margin_loss(lengths, torch.tensor([0]), 0.6, 0.4, 1.0).item() == pytest.approx(0.02, abs=1e-6)


def test_squash_keeps_direction_and_maps_length():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e3, 0.0]])
    v = squash(s)
    assert v[0].norm().item() == pytest.approx(25 / 26, abs=1e-6)
    assert torch.allclose(v[0] / v[0].norm(), torch.tensor([0.6, 0.8]), atol=1e-6)
    assert torch.all(torch.isfinite(v[1])) and v[1].norm().item() == 0.0
    assert v[2].norm().item() < 1.0


def test_agreement_outside_ignores_valid_area():
    gate = torch.full((1, 1, 2, 2), 0.9)
    all_valid = torch.ones(1, 1, 2, 2)
    assert agreement_loss(gate, all_valid, "outside").item() == pytest.approx(0.0, abs=1e-6)
    none_valid = torch.zeros(1, 1, 2, 2)
    assert agreement_loss(gate, none_valid, "outside").item() == pytest.approx(-math.log(0.1), rel=1e-4)
    assert agreement_loss(gate, all_valid, "bce").item() == pytest.approx(-math.log(0.9), rel=1e-4)
    with pytest.raises(ValueError, match="agreement"):
        agreement_loss(gate, all_valid, "nope")


def test_total_loss_adds_weighted_agreement():
    out = {"scores": torch.tensor([[0.9, 0.1]]), "gate": torch.full((1, 1, 1, 1), 0.5),
           "mask": torch.zeros(1, 1, 1, 1), "has_gate": True}
    losses = saganet_loss(out, torch.tensor([0]), LossConfig(agreement_weight=0.5))
    assert losses["class_loss"].item() == pytest.approx(0.0, abs=1e-7)
    assert losses["loss"].item() == pytest.approx(0.5 * math.log(2), rel=1e-4)


def test_cross_entropy_variant():
    out = {"scores": torch.tensor([[0.0, 0.0]])}
    assert saganet_loss(out, torch.tensor([1]), LossConfig(kind="ce"))["loss"].item() == pytest.approx(math.log(2), rel=1e-5)
