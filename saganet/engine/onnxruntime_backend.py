"""ONNX Runtime on the bundle's model.onnx (standard ops only)."""
from __future__ import annotations

import numpy as np

from ..bundle import MAX_BATCH


def unavailable(bundle) -> str | None:
    if not bundle.has("onnx"):
        return "the bundle has no model.onnx (export it with --formats onnx)"
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"onnxruntime is not installed ({e})"
    return None


class Backend:
    max_batch = MAX_BATCH  # the exported graph's batch range
    preprocess = None

    def __init__(self, bundle, threads: int | None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(bundle.file("model.onnx")), opts, providers=providers)

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        probs, scores, gate = self.session.run(["probs", "scores", "gate"], {"image": image, "mask": mask})
        return probs, scores, gate
