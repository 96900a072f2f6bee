"""The native C++ engine (csrc/engine/native_engine.cpp) through the pybind11 module saganet._C: the same
AOTInductor package and the same preprocessing as the C API gives scanners, written in C++."""
from __future__ import annotations

import numpy as np

from ..bundle import BundleError
from .aoti_backend import unavailable as _aoti_unavailable


def unavailable(bundle) -> str | None:
    try:
        from .. import _C
    except ImportError as e:
        return f"saganet._C is not built ({e})"
    if not hasattr(_C, "Engine"):
        return ("saganet._C was built without the engine (it needs libtorch, nlohmann_json and OpenSSL; "
                "see the CMake output of pip install -e .)")
    prep = bundle.preprocessing
    if prep.stain_target is not None:
        return "the bundle uses stain normalisation, which the native engine does not implement"
    if isinstance(prep.mask.nuclei_threshold, str):
        return "the bundle's mask uses an Otsu nuclei threshold, which the native engine does not implement"
    return _aoti_unavailable(bundle)


class Backend:
    def __init__(self, bundle, threads: int | None):
        from .. import _C

        try:
            self.engine = _C.Engine(str(bundle.path), threads or 0)
        except ValueError as e:
            raise BundleError(str(e)) from None  # the C++ checks refused the bundle

        self.max_batch = int(bundle.manifest.formats["aoti"].get("max_batch", 1024))

    def preprocess(self, tiles: np.ndarray):  # in C++, on every core
        return self.engine.preprocess(np.ascontiguousarray(tiles))

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        return self.engine.run(image, mask)
