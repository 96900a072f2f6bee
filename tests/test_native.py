"""The native gate-mask pooling op (C++ kernels through torch.library) against the float64
pure-PyTorch reference: values, gradients, layouts, dtypes, errors, torch.compile and torch.export."""
import os

import numpy as np
import pytest
import torch

from saganet import ops
from saganet.model.gate import GateMaskPool, gate_mask_pool, gate_mask_pool_reference

CI = os.environ.get("CI", "").lower() == "true"


def test_native_op_is_built():
    if not ops.AVAILABLE:
        if CI:  # the test command builds it: a missing op is a build failure, not a skip
            pytest.fail(f"native op not available: {ops.LOAD_ERROR}")
        pytest.skip(f"native op not available: {ops.LOAD_ERROR}")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("saganet::gate_mask_pool", "CPU")


native = pytest.mark.skipif(not ops.AVAILABLE, reason=f"native op not available: {ops.LOAD_ERROR}")

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 1, 13, 11), (2, 1024, 3, 3), (3, 64, 14, 14), (2, 5, 40, 1)]


def _inputs(shape, layout, bool_mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    if layout == "sliced":  # every other channel of a bigger tensor: non-contiguous
        f = torch.randn(b, 2 * c, h, w, generator=g, dtype=torch.float64)[:, ::2]
    elif layout == "transposed":  # H and W swapped in memory
        f = torch.randn(b, c, w, h, generator=g, dtype=torch.float64).transpose(2, 3)
    else:
        f = torch.randn(shape, generator=g, dtype=torch.float64)
        if layout == "channels_last":
            f = f.contiguous(memory_format=torch.channels_last)
    gl = 2 * torch.randn(b, 1, h, w, generator=g, dtype=torch.float64)
    m = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    m = m > 0.3 if bool_mask else m
    return f, gl, m


@native
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "transposed"])
@pytest.mark.parametrize("bool_mask", [False, True])
def test_matches_float64_reference(shape, layout, bool_mask):
    f64, g64, m = _inputs(shape, layout, bool_mask)
    coef = torch.randn(shape[0], shape[1], dtype=torch.float64)
    f64.requires_grad_(), g64.requires_grad_()
    (gate_mask_pool_reference(f64, g64, m) * coef).sum().backward()
    f = f64.detach().float().requires_grad_()  # .float() keeps the memory layout
    g = g64.detach().float().requires_grad_()
    z = ops.gate_mask_pool(f, g, m if bool_mask else m.float())
    (z * coef.float()).sum().backward()
    ref = gate_mask_pool_reference(f64.detach(), g64.detach(), m)
    assert z.dtype == torch.float32 and z.shape == shape[:2]
    # float32 sums of O(1) terms against float64: absolute 1e-5 covers the rounding, not a bug
    torch.testing.assert_close(z.detach().double(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f.grad.double(), f64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g.grad.double(), g64.grad, rtol=1e-4, atol=1e-5)
    if layout == "channels_last":  # the gradient keeps the layout: no hidden copy
        assert f.grad.is_contiguous(memory_format=torch.channels_last)


@native
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_gradcheck_float64(layout):
    f, g, m = _inputs((2, 3, 4, 5), layout, False, seed=3)
    f.requires_grad_(), g.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.gate_mask_pool(a, b, m), (f, g), eps=1e-6, atol=1e-7)


@native
def test_bfloat16_and_weights():
    f, g, m = _inputs((2, 48, 9, 9), "contiguous", False, seed=4)
    z, w = ops.gate_mask_pool(f.to(torch.bfloat16), g.float(), m.float(), return_weights=True)
    ref = gate_mask_pool_reference(f.to(torch.bfloat16).double(), g, m)
    assert z.dtype == torch.bfloat16 and (z.double() - ref).abs().max() < 2e-2
    assert torch.allclose(w.double(), torch.sigmoid(g) * m, atol=1e-6)
    fb = f.to(torch.bfloat16).requires_grad_()
    ops.gate_mask_pool(fb, g.float(), m.float()).float().sum().backward()
    assert fb.grad.dtype == torch.bfloat16 and torch.isfinite(fb.grad.float()).all()


@native
def test_errors_are_clear():
    f, g, m = torch.randn(2, 3, 4, 4), torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    op = torch.ops.saganet.gate_mask_pool
    with pytest.raises(RuntimeError, match="features must be 4-D"):
        op(f[0], g, m, 1e-6)
    with pytest.raises(RuntimeError, match=r"gate_logits must have shape \(2, 1, 4, 4\)"):
        op(f, g[:, :, :3], m, 1e-6)
    with pytest.raises(RuntimeError, match=r"mask must have shape"):
        op(f, g, m[:1], 1e-6)
    with pytest.raises(RuntimeError, match="features must be float32, bfloat16, float16 or float64, got Int"):
        op(f.int(), g, m, 1e-6)
    with pytest.raises(RuntimeError, match="float16 features are supported on CUDA only"):
        op(f.half(), g, m, 1e-6)
    with pytest.raises(RuntimeError, match="eps must be positive"):
        op(f, g, m, 0.0)
    with pytest.raises(RuntimeError, match="must not be empty"):
        op(f[:, :0], g, m, 1e-6)
    with pytest.raises(RuntimeError, match=r"mask must be floating point \(in \[0, 1\]\) or bool, got Int"):
        op(f, g, m.int(), 1e-6)
    with pytest.raises(ValueError, match="gate_logits must be"):  # the Python entry point checks first
        gate_mask_pool(f, g[:, :, :3], m)


@native
def test_model_entry_point_uses_native_and_agrees(data_dir):
    from shared_data import few_per_class
    from saganet.model import SagaNet, variant_config
    from saganet.config import TrainConfig
    from saganet.train import make_preprocessing
    from saganet.preprocess import prepare_images

    raw, _, _ = few_per_class(data_dir, "lymphoma_iicbu", 1)
    prep = make_preprocessing(raw, TrainConfig())
    imgs, masks = prepare_images(raw, prep)
    torch.manual_seed(0)
    model = SagaNet(variant_config("saganet")).eval()
    with torch.no_grad():
        feats = model.backbone(prep.to_tensor(np.stack(imgs)))  # real feature maps of real tiles
        logits = model.pool.gate(feats) + torch.randn(feats.shape[0], 1, *feats.shape[2:])
        m = torch.from_numpy(np.stack(masks)).unsqueeze(1).float()
        m = torch.nn.functional.adaptive_avg_pool2d(m, feats.shape[2:])
        native_z = gate_mask_pool(feats, logits, m)
        ref = gate_mask_pool_reference(feats.double(), logits.double(), m.double())
    assert ops.supports(feats)
    assert (native_z.double() - ref).abs().max() / ref.abs().max() < 1e-5


@native
def test_torch_compile_and_export():
    pool = GateMaskPool(16)
    f, m = torch.randn(2, 16, 7, 9), torch.rand(2, 1, 7, 9)
    want = pool(f, m)[0]
    compiled = torch.compile(lambda a, b: pool(a, b)[0], fullgraph=True)
    assert torch.allclose(compiled(f, m), want, atol=1e-6)
    exported = torch.export.export(pool, (f, m))
    assert "saganet.gate_mask_pool" in str(exported.graph)
    assert torch.allclose(exported.module()(f, m)[0], want, atol=1e-6)


@native
def test_numpy_module_matches():
    from saganet import _C

    f, g, m = _inputs((2, 7, 5, 6), "contiguous", False, seed=9)
    z, w = _C.gate_mask_pool(f.numpy().astype(np.float32), g[:, 0].numpy(), m[:, 0].numpy())
    ref = gate_mask_pool_reference(f, g, m).numpy()
    assert np.abs(z - ref).max() < 1e-5 and w.shape == (2, 5, 6)
    z_cl, _ = _C.gate_mask_pool(np.ascontiguousarray(f.permute(0, 2, 3, 1).numpy()), g[:, 0].numpy(), m[:, 0].numpy(),
                                channels_last=True)
    assert np.abs(z_cl - ref).max() < 1e-5
    with pytest.raises(ValueError, match="gate_logits and mask must have shape"):
        _C.gate_mask_pool(f.numpy(), g.numpy(), m[:, 0].numpy())
    with pytest.raises(ValueError, match="eps must be positive"):
        _C.gate_mask_pool(f.numpy(), g[:, 0].numpy(), m[:, 0].numpy(), eps=-1.0)
    assert "saganet 0.1.0" in _C.build_info() and _C.version() == "0.1.0"


class _Pooled(torch.nn.Module):
    """GateMaskPool returning z only: the graph AOTInductor compiles."""

    def __init__(self):
        super().__init__()
        self.pool = GateMaskPool(16)

    def forward(self, f, m):
        return self.pool(f, m)[0]


@native
def test_aot_inductor_package_calls_the_op(tmp_path):
    model = _Pooled().eval()
    f, m = torch.randn(3, 16, 7, 9), torch.rand(3, 1, 7, 9)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (f, m), dynamic_shapes=({0: batch}, {0: batch}))
    assert "saganet.gate_mask_pool" in str(ep.graph)
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "pool.pt2"))
    compiled = torch._inductor.aoti_load_package(path)
    for b in (1, 3, 5):  # dynamic batch
        fb, mb = torch.randn(b, 16, 7, 9), torch.rand(b, 1, 7, 9)
        torch.testing.assert_close(compiled(fb, mb), model(fb, mb), rtol=1e-5, atol=1e-6)


@native
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_opcheck(layout):
    """torch.library.opcheck: schema, fake (meta) kernel, autograd registration and AOT dispatch agree."""
    f, g, m = _inputs((2, 6, 5, 4), layout, False)
    f.requires_grad_(True)
    g.requires_grad_(True)
    torch.library.opcheck(torch.ops.saganet.gate_mask_pool.default, (f, g, m, 1e-6))
    torch.library.opcheck(torch.ops.saganet.gate_mask_pool.default, (f.float().detach(), g.float().detach(), m.float(), 1e-6))
