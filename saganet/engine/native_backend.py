"""The native C++ engine (csrc/engine.cpp) through the pybind11 module saganet._C: the same
AOTInductor package and the same preprocessing as the C API gives scanners, written in C++."""
from __future__ import annotations

import numpy as np

from .aoti_backend import unavailable as _aoti_unavailable


def unavailable(bundle) -> str | None:
    try:
        from .. import _C
    except ImportError as e:
        return f"saganet._C is not built ({e})"
    if not hasattr(_C, "Engine"):
        return "saganet._C was built without the engine (it needs libtorch: SAGANET_TORCH=ON)"
    return _aoti_unavailable(bundle)


class Backend:
    def __init__(self, bundle, threads: int | None):
        from .. import _C

        self.engine = _C.Engine(str(bundle.path), threads or 0)

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        return self.engine.run(image, mask)
