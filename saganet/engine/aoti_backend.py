"""AOTInductor: the bundle's model.pt2, compiled ahead of time for this CPU, calling the fused op."""
from __future__ import annotations

import numpy as np
import torch

from ..bundle import MAX_BATCH, PACKAGE_TILE_KEY, BundleError, isa_mismatch


def unavailable(bundle) -> str | None:
    info = bundle.manifest.formats.get("aoti")
    if info is None:
        return "the bundle has no model.pt2 (export it with --formats aoti)"
    why = isa_mismatch(info.get("isa", {}))
    if why:
        return f"model.pt2 {why}; re-export the bundle on this machine"
    built, here = info.get("torch", "?").split("+")[0], torch.__version__.split("+")[0]
    if built != here:
        return f"model.pt2 was compiled with torch {built}, this is torch {here}"
    if "saganet::gate_mask_pool" in info.get("custom_ops", []):
        from .. import ops

        if not ops.AVAILABLE:
            return f"model.pt2 calls saganet::gate_mask_pool, but the native op is {ops.LOAD_ERROR}"
    return None


def check_package_tile(metadata: dict, bundle) -> None:
    """The compiled package reads tiles of the size it was compiled for whatever it is given: it must
    be the manifest's (csrc/engine/native_engine.cpp checks the same)."""
    recorded = metadata.get(PACKAGE_TILE_KEY)
    if recorded is None:
        raise BundleError(f"{bundle.file('model.pt2')}: does not record the tile size it was compiled for (exported "
                          f"before saganet bundle format 2); re-export: saganet export {bundle.path} --out NEW")
    if recorded != str(bundle.tile_size):
        raise BundleError(f"{bundle.file('model.pt2')}: compiled for {recorded} px tiles, but the manifest says "
                          f"{bundle.tile_size}; the bundle is inconsistent")


class Backend:
    max_batch = MAX_BATCH  # the exported graph's batch range
    preprocess = None

    def __init__(self, bundle, threads: int | None):
        if threads:
            torch.set_num_threads(threads)
        self.model = torch._inductor.aoti_load_package(str(bundle.file("model.pt2")))
        check_package_tile(self.model.get_metadata(), bundle)

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        # The compiled code does not check shapes (AOTI_RUNTIME_CHECK_INPUTS is off): the engine
        # has checked the tile size and keeps the batch inside the exported range (max_batch).
        with torch.inference_mode():
            return tuple(o.numpy() for o in self.model(torch.from_numpy(image), torch.from_numpy(mask)))
