"""Fused gate-mask pooling (native op) against the unfused PyTorch ops and against a plain copy of
the same feature map (the memory-bandwidth ceiling), side by side in one run. Not asserted.

Shapes: the native-core issue's three (B=32 C=512 14x14, B=64 C=256 28x28, B=8 C=2048 7x7), a
large one (256x512x14x14, 103 MB) and resnet-tiny's training step (32x256x4x4). extra_info: GB/s of
the feature map read (forward) or read twice + gradient written (forward+backward).
References in the same run: `copy` (F into a buffer allocated once), `memcpy_512MB` (the machine's
copy bandwidth out of cache) and `fresh_write` (allocate a tensor like F and fill it: what writing
a new gradient costs, first-touch page faults included).
Run: make bench (or pytest benchmarks/test_gate_mask_pool_speed.py --benchmark-only).
"""
import pytest
import torch

from saganet import ops
from saganet.model.gate import gate_mask_pool_reference

SHAPES = {"32x512x14x14": (32, 512, 14, 14), "64x256x28x28": (64, 256, 28, 28), "8x2048x7x7": (8, 2048, 7, 7),
          "256x512x14x14": (256, 512, 14, 14), "32x256x4x4": (32, 256, 4, 4)}
IMPLS = ["native", "reference", "copy", "fresh_write"]


def _inputs(shape, channels_last):
    torch.manual_seed(0)
    b, c, h, w = shape
    f = torch.randn(shape)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    return f, torch.randn(b, 1, h, w), torch.rand(b, 1, h, w)


def _run(benchmark, impl, shape, channels_last, backward):
    if impl == "native" and not ops.AVAILABLE:
        pytest.skip(f"native op not available: {ops.LOAD_ERROR}")
    f, g, m = _inputs(shape, channels_last)
    if impl == "copy":  # read F and write it to a buffer allocated once: the bandwidth ceiling
        out = torch.empty_like(f)
        fn = lambda: out.copy_(f)
        moved = 2 * f.numel() * 4
    elif impl == "fresh_write":  # a new tensor like F, written once: the floor of any backward
        fn = lambda: torch.empty_like(f).fill_(1.0)
        moved = f.numel() * 4
    else:
        pool = ops.gate_mask_pool if impl == "native" else gate_mask_pool_reference
        if backward:
            f.requires_grad_(), g.requires_grad_()

            def fn():
                f.grad = g.grad = None
                pool(f, g, m).sum().backward()
        else:
            fn = lambda: pool(f, g, m)
        moved = f.numel() * 4 * (3 if backward else 1)  # forward reads F; backward reads F and writes dF
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(GB_per_s=round(moved / benchmark.stats.stats.mean / 1e9, 2), threads=torch.get_num_threads(),
                                layout="channels_last" if channels_last else "NCHW")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_forward(benchmark, impl, shape, channels_last):
    _run(benchmark, impl, SHAPES[shape], channels_last, backward=False)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_forward_backward(benchmark, impl, shape, channels_last):
    _run(benchmark, impl, SHAPES[shape], channels_last, backward=True)


def test_memcpy_512MB(benchmark):
    """The machine's copy bandwidth for data far larger than any cache (read + write counted)."""
    src = torch.ones(128 * 2**20)
    dst = torch.empty_like(src)
    benchmark.pedantic(lambda: dst.copy_(src), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(GB_per_s=round(2 * src.numel() * 4 / benchmark.stats.stats.mean / 1e9, 2),
                                threads=torch.get_num_threads())
