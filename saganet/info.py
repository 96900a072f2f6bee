"""`saganet info`: what is installed and what is built."""
from __future__ import annotations

import importlib
import platform

from . import __version__


def _version(mod: str) -> str:
    try:
        return getattr(importlib.import_module(mod), "__version__", "installed")
    except Exception as e:  # an import that fails is exactly what info must report
        return f"unavailable ({type(e).__name__}: {e})"


def info_text() -> str:
    import torch

    lines = [f"saganet {__version__}", f"python {platform.python_version()} on {platform.machine()} ({platform.system()})",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, CUDA available: {torch.cuda.is_available()}"]
    for mod in ("numpy", "skimage", "sklearn", "safetensors", "PIL"):
        lines.append(f"{mod} {_version(mod)}")
    from . import ops

    try:
        c = importlib.import_module("saganet._C")
        lines.append(f"native library: {c.build_info()}")
    except ImportError as e:
        lines.append(f"native library: not built ({e})")
    if ops.AVAILABLE:
        devices = [d for d in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key("saganet::gate_mask_pool", d)]
        lines.append(f"gate_mask_pool: fused native op ({', '.join(devices)} kernels registered with torch)")
    else:
        lines.append(f"gate_mask_pool: pure-PyTorch reference; native op {ops.LOAD_ERROR}")
    for mod in ("openslide", "onnx", "onnxruntime"):
        lines.append(f"{mod} {_version(mod)}")
    from .bundle import cpu_isa

    isa = cpu_isa()
    lines.append(f"CPU: {isa['machine']}, torch capability {isa['capability']}, {' '.join(isa['flags'])}")
    lines.append("inference backends (availability depends on the bundle too: `saganet info --bundle B`): "
                 "torch, onnxruntime, aoti, native, tensorrt")
    return "\n".join(lines)


def backends_text(bundle_path) -> str:
    from .engine import backend_status

    from .bundle import load_bundle

    b = load_bundle(bundle_path)
    return "\n".join(f"  {name}: {'available' if why is None else 'unavailable: ' + why}"
                     for name, why in backend_status(b).items())
