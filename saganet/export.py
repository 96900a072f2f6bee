"""Writing model bundles from training runs (saganet/bundle.py defines the format and reads it).

The exported graphs take `image` (N,3,T,T) normalised float32 and `mask` (N,1,T,T) in {0,1} and
return `probs`, `scores` and `gate`; preprocessing stays outside them (saganet.engine does it).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .bundle import FORMAT, FORMAT_VERSION, MAX_BATCH, PACKAGE_TILE_KEY, BundleError, cpu_isa, load_bundle, sha256_file
from .config import EXPORT_FORMATS, PRECISIONS
from .preprocess import Preprocessing


class InferenceModel(nn.Module):
    """The trained network with a flat signature for export: (image, mask) -> (probs, scores, gate)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, mask: torch.Tensor):
        out = self.model(image, mask)
        return out["probs"], out["scores"], out["gate"]


def _example_inputs(tile: int, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, tile, tile, generator=g), (torch.rand(batch, 1, tile, tile, generator=g) > 0.3).float()


def _dynamic_batch():
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return {"image": {0: batch}, "mask": {0: batch}}


def export_onnx(model: nn.Module, tile: int, path: Path) -> dict:
    import onnx

    from . import ops

    wrapper = InferenceModel(model).eval()
    with ops.reference_only(), torch.no_grad():
        prog = torch.onnx.export(wrapper, _example_inputs(tile), dynamo=True, input_names=["image", "mask"],
                                 output_names=["probs", "scores", "gate"], dynamic_shapes=_dynamic_batch(),
                                 external_data=False, verbose=False)
        prog.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    m = onnx.load(str(path))
    domains = sorted({n.domain or "ai.onnx" for n in m.graph.node})
    if domains != ["ai.onnx"]:
        raise BundleError(f"{path}: the ONNX graph uses non-standard op domains {domains}")
    return {"opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), "ops": sorted({n.op_type for n in m.graph.node})}


class _BFloat16(nn.Module):
    """The network in bfloat16 behind a float32 signature: inputs are cast inside the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(torch.bfloat16)

    def forward(self, image: torch.Tensor, mask: torch.Tensor):
        probs, scores, gate = self.model(image.to(torch.bfloat16), mask)
        return probs.float(), scores.float(), gate.float()


def export_aoti(model: nn.Module, tile: int, path: Path, freezing: bool = True, precision: str = "float32") -> dict:
    """AOTInductor package for this CPU. bfloat16 halves the convolutions' cost on CPUs with
    AVX512-BF16 or AMX, at a measured cost in agreement with float32 (docs/performance.md)."""
    import copy

    from . import ops

    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    wrapper = InferenceModel(copy.deepcopy(model)).eval()
    if precision == "bfloat16":
        wrapper = _BFloat16(wrapper).eval()
    with torch.no_grad():
        ep = torch.export.export(wrapper, _example_inputs(tile), dynamic_shapes=_dynamic_batch())
        torch._inductor.aoti_compile_and_package(ep, package_path=str(path), inductor_configs={
            "freezing": freezing, "aot_inductor.metadata": {PACKAGE_TILE_KEY: str(tile)}})
    calls_op = any("saganet.gate_mask_pool" in str(n.target) for n in ep.graph.nodes if n.op == "call_function")
    return {"isa": cpu_isa(), "torch": torch.__version__, "freezing": freezing, "max_batch": MAX_BATCH,
            "precision": precision, "custom_ops": ["saganet::gate_mask_pool"] if calls_op else [],
            "native_op_loaded": ops.AVAILABLE}


def export_bundle(source, out, mpp: float | None = None, tile_size: int | None = None, formats=("onnx", "aoti"),
                  card: str | None = None, freezing: bool = True, precision: str = "float32", log=print) -> dict:
    """Write BUNDLE `out` from `source`: a training run, or a bundle (re-exported, e.g. to compile
    its AOTInductor package for this machine). `mpp`: microns per pixel of the images the run was
    trained on (before its --scale); the bundle records the MPP the network actually sees. For a
    bundle source, its own MPP, tile size and card are kept unless given."""
    from .run import load_run

    source, out = Path(source), Path(out)
    for f in formats:
        if f not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {f!r}; use {' and/or '.join(EXPORT_FORMATS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    from_bundle = (source / "manifest.json").is_file()
    if from_bundle:
        b = load_bundle(source)
        mpp = b.mpp if mpp is None else mpp
        tile_size = tile_size or b.tile_size
        card = card if card is not None else b.file("card.md").read_text() if "card.md" in b.manifest.files else None
    if mpp is None or not (mpp > 0):
        raise ValueError(f"--mpp must be a positive number of microns per pixel, got {mpp}")
    tile = int(tile_size or 224)
    if not 16 <= tile <= 4096:
        raise ValueError(f"--tile-size must be 16..4096 pixels, got {tile}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty directory; choose a new bundle directory")
    if from_bundle:
        model, prep = b.model(), b.preprocessing
        config = {"class_names": b.class_names, "model": b.manifest.model}
    else:
        model, config, prep = load_run(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copyfile(source / "weights.safetensors", tmp / "weights.safetensors")
        formats_info = {}
        if "onnx" in formats:
            t0 = time.perf_counter()
            formats_info["onnx"] = export_onnx(model, tile, tmp / "model.onnx") | {"file": "model.onnx"}
            log(f"model.onnx written and checked ({time.perf_counter() - t0:.1f} s)")
        if "aoti" in formats:
            t0 = time.perf_counter()
            formats_info["aoti"] = export_aoti(model, tile, tmp / "model.pt2", freezing, precision) | {"file": "model.pt2"}
            log(f"model.pt2 compiled, {precision} ({time.perf_counter() - t0:.1f} s)")
        (tmp / "card.md").write_text(card or _default_card(source, config))
        inference_prep = Preprocessing.from_dict(prep.to_dict() | {"scale": 1.0})  # the tile grid does the scaling
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "saganet_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": str(source),
            "class_names": list(config["class_names"]), "tile_size": tile, "mpp": float(mpp) / prep.scale,
            "preprocessing": inference_prep.to_dict(), "model": config["model"],
            "outputs": {"probs": "class probabilities", "scores": "class-vector lengths" if config["model"]["head"] == "length" else "logits",
                        "gate": "spatial gate sigmoid(conv(F)) at feature resolution"},
            "formats": formats_info,
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir())},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        # The manifest's own digest: the manifest covers every other file, this covers the manifest
        # (an edited tile_size made the compiled engines read past their buffers).
        (tmp / "manifest.sha256").write_text(sha256_file(tmp / "manifest.json") + "\n")
        for p in tmp.iterdir():
            p.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _default_card(run: Path, config: dict) -> str:
    return (f"# saganet model\n\nExported from the training run `{run}`.\nClasses: {', '.join(config['class_names'])}.\n"
            f"Training settings: see manifest.json.\n")
