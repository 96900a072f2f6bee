"""PyTorch eager: the trained module itself (with the fused gate-mask op when it is built)."""
from __future__ import annotations

import numpy as np
import torch


def unavailable(bundle) -> str | None:
    return None


class Backend:
    max_batch = 1024  # any size runs; chunks bound the activations' memory
    preprocess = None

    def __init__(self, bundle, threads: int | None):
        if threads:
            torch.set_num_threads(threads)
        self.model = bundle.model().to(memory_format=torch.channels_last)

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        with torch.inference_mode():
            x = torch.from_numpy(image).contiguous(memory_format=torch.channels_last)
            out = self.model(x, torch.from_numpy(mask))
        return out["probs"].numpy(), out["scores"].numpy(), out["gate"].float().numpy()
