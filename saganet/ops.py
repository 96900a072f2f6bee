"""The native `saganet::gate_mask_pool` op: loads libsaganet_torch (built by setup.py's CMake
build next to this file), registers its autograd formula, and wraps it.

Kernels, autograd and module are kept apart (as in FlashAttention): the kernels are in
`csrc/`, the op's schema, CPU/CUDA and Meta kernels in `csrc/torch_ops*.cpp`, the autograd
registration here, and `saganet.model.gate` decides when to use it. `SAGANET_NATIVE=0` forces
the pure-PyTorch reference everywhere (for example to reproduce results recorded with it).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

LIBRARY = Path(__file__).resolve().parent / "libsaganet_torch.so"


def _load() -> str | None:
    if os.environ.get("SAGANET_NATIVE", "1") == "0":
        return "disabled by SAGANET_NATIVE=0"
    if not LIBRARY.is_file():
        return f"not built ({LIBRARY.name} is not beside saganet/__init__.py; pip install -e . builds it)"
    try:
        torch.ops.load_library(str(LIBRARY))
    except (OSError, RuntimeError) as e:
        return f"cannot load {LIBRARY}: {e}"
    return None


LOAD_ERROR = _load()
AVAILABLE = LOAD_ERROR is None


def _setup_context(ctx, inputs, output):
    features, gate_logits, mask, eps = inputs
    z, weights = output
    ctx.save_for_backward(features, gate_logits, mask, z)
    ctx.eps = eps
    ctx.mark_non_differentiable(weights)  # for visualisation only


def _backward(ctx, grad_z, _grad_weights):
    features, gate_logits, mask, z = ctx.saved_tensors
    if grad_z is None:
        return None, None, None, None
    d_features, d_gate = torch.ops.saganet.gate_mask_pool_backward(grad_z, features, gate_logits, mask, z, ctx.eps)
    return d_features, d_gate, None, None


if AVAILABLE:
    torch.library.register_autograd("saganet::gate_mask_pool", _backward, setup_context=_setup_context)


_reference_only = False


@contextlib.contextmanager
def reference_only():
    """Inside this block the model pools with the pure-PyTorch reference, e.g. to export a graph of
    standard ops (ONNX) that runs where the native op does not exist."""
    global _reference_only
    before, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = before


def supports(features: torch.Tensor) -> bool:
    """Whether the native op has a kernel for this device and dtype (and is not switched off)."""
    if not AVAILABLE or _reference_only:
        return False
    if features.device.type == "cpu":
        return features.dtype in (torch.float32, torch.bfloat16)
    if features.device.type == "cuda":
        return features.dtype in (torch.float32, torch.float16, torch.bfloat16) and torch._C._dispatch_has_kernel_for_dispatch_key(
            "saganet::gate_mask_pool", "CUDA")
    return False


def gate_mask_pool(features, gate_logits, mask, eps: float = 1e-6, return_weights: bool = False):
    """z (B,C) = sum_hw(F*sigmoid(G)*M) / (sum_hw(sigmoid(G)*M) + eps) by the fused kernels; with
    return_weights also the per-pixel weights sigmoid(G)*M (B,1,H,W), float32, not differentiable."""
    if not AVAILABLE:
        raise RuntimeError(f"saganet native op unavailable: {LOAD_ERROR}")
    z, weights = torch.ops.saganet.gate_mask_pool(features, gate_logits, mask, eps)
    return (z, weights) if return_weights else z
