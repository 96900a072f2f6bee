import pytest
import torch

from saganet.model import GateMaskPool, gate_mask_pool, gate_mask_pool_reference
from saganet.model.gate import mask_to_features


def naive(features, gate_logits, mask, eps=1e-6):
    b, c, h, w = features.shape
    out = torch.zeros(b, c, dtype=torch.float64)
    for i in range(b):
        den = 0.0
        for y in range(h):
            for x in range(w):
                den += torch.sigmoid(gate_logits[i, 0, y, x]).item() * mask[i, 0, y, x].item()
        for k in range(c):
            num = 0.0
            for y in range(h):
                for x in range(w):
                    num += features[i, k, y, x].item() * torch.sigmoid(gate_logits[i, 0, y, x]).item() * mask[i, 0, y, x].item()
            out[i, k] = num / (den + eps)
    return out


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 3, 5), (3, 7, 4, 4)])
def test_reference_matches_naive_loop(shape):
    g = torch.Generator().manual_seed(0)
    b, c, h, w = shape
    f = torch.randn(shape, generator=g, dtype=torch.float64)
    logits = torch.randn(b, 1, h, w, generator=g, dtype=torch.float64)
    m = (torch.rand(b, 1, h, w, generator=g) > 0.3).double()
    assert torch.allclose(gate_mask_pool_reference(f, logits, m), naive(f, logits, m), atol=1e-10)
    assert torch.allclose(gate_mask_pool(f, logits, m), naive(f, logits, m), atol=1e-10)


def test_all_gates_open_and_full_mask_is_average_pooling():
    f = torch.randn(2, 4, 5, 6)
    z = gate_mask_pool(f, torch.full((2, 1, 5, 6), 30.0), torch.ones(2, 1, 5, 6))
    assert torch.allclose(z, f.mean(dim=(2, 3)), atol=1e-5)


def test_masked_pixels_do_not_contribute():
    f = torch.zeros(1, 1, 2, 2)
    f[0, 0, 0, 0] = 100.0  # only under the invalid pixel
    m = torch.ones(1, 1, 2, 2)
    m[0, 0, 0, 0] = 0
    assert gate_mask_pool(f, torch.zeros(1, 1, 2, 2), m).abs().max().item() == 0.0


def test_bool_mask_accepted_and_shape_errors():
    f = torch.randn(1, 2, 3, 3)
    z = gate_mask_pool(f, torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 3, 3, dtype=torch.bool))
    assert z.shape == (1, 2)
    with pytest.raises(ValueError, match="mask must be"):
        gate_mask_pool(f, torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 3, 4))
    with pytest.raises(ValueError, match="features must be"):
        gate_mask_pool(f[0], torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 3, 3))


def test_mask_to_features_fraction_and_floor():
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1
    assert torch.allclose(mask_to_features(m, (2, 2)), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))
    assert torch.allclose(mask_to_features(m, (2, 2), floor=0.1), torch.tensor([[[[1.0, 1.0], [0.1, 0.1]]]]))


def test_module_switches():
    f = torch.randn(2, 8, 4, 4)
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., :8, :] = 1
    z, g, m = GateMaskPool(8, use_gate=False, use_mask=False)(f, mask)
    assert torch.allclose(z, f.mean(dim=(2, 3)), atol=1e-5) and torch.all(m == 1)
    z, g, m = GateMaskPool(8, use_gate=False, use_mask=True)(f, mask)
    assert torch.allclose(z, f[..., :2, :].mean(dim=(2, 3)), atol=1e-5)
    pool = GateMaskPool(8, use_gate=True, use_mask=True)
    z, g, m = pool(f, mask)
    assert g.shape == (2, 1, 4, 4) and z.shape == (2, 8)
    z.sum().backward()
    assert pool.gate.weight.grad is not None and pool.gate.weight.grad.abs().sum() > 0
