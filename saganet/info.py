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
    try:
        importlib.import_module("saganet._C")
        native = "built (saganet._C)"
    except ImportError:
        native = "not built: gate_mask_pool runs the pure-PyTorch reference"
    lines.append(f"native extension: {native}")
    lines.append("inference backends: torch (eager) available; onnxruntime, aoti, native, tensorrt: not part of this version")
    return "\n".join(lines)
