"""Model bundles: the contract between training and inference, one directory checked on load.

    BUNDLE/manifest.json        format and version, class names, tile size and microns per pixel,
                                preprocessing (normalisation, valid-area mask, stain), model config,
                                sha256 of every other file, what the AOTInductor package needs
    BUNDLE/weights.safetensors  the trained weights (torch and native backends rebuild from these)
    BUNDLE/model.onnx           standard ONNX ops (pure-PyTorch pooling), dynamic batch
    BUNDLE/model.pt2            AOTInductor package for this CPU, calling the fused gate_mask_pool op
    BUNDLE/card.md              the model card (what it was trained on, licence, intended use)

Every exported graph takes `image` (N,3,T,T) normalised float32 and `mask` (N,1,T,T) valid-area
mask in {0,1}, and returns `probs` (N,K), `scores` (N,K; class-vector lengths for the length
head) and `gate` (N,1,h,w). Preprocessing is not in the graphs: the engine does it, identically
for every backend (saganet.engine).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .config import PRECISIONS
from .preprocess import Preprocessing

FORMAT = "saganet-bundle"
FORMAT_VERSION = 2  # 2: manifest.sha256 beside the manifest; model.pt2 records its tile size
PACKAGE_TILE_KEY = "saganet_tile_size"  # in model.pt2's metadata: the tile edge it was compiled for
MAX_BATCH = 1024  # upper bound of the exported graphs' dynamic batch dimension
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni",
              "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


class BundleError(ValueError):
    """A bundle that cannot be used: missing, damaged, foreign or from a newer saganet."""


class InferenceModel(nn.Module):
    """The trained network with a flat signature for export: (image, mask) -> (probs, scores, gate)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, mask: torch.Tensor):
        out = self.model(image, mask)
        return out["probs"], out["scores"], out["gate"]


def cpu_isa() -> dict:
    """This CPU's vector instruction sets: AOTInductor compiles for the machine it runs on
    (-march=native), so a package needs every flag it was built with."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "capability": torch.backends.cpu.get_cpu_capability(),
            "flags": sorted(f for f in _ISA_FLAGS if f in flags)}


def isa_mismatch(required: dict) -> str | None:
    """Why a package compiled for `required` cannot run here, or None when it can."""
    here = cpu_isa()
    if required.get("machine") != here["machine"]:
        return f"compiled for {required.get('machine')}, this machine is {here['machine']}"
    missing = sorted(set(required.get("flags", [])) - set(here["flags"]))
    if missing:
        return f"compiled for a CPU with {', '.join(missing)}, which this CPU lacks"
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        if f not in ("onnx", "aoti"):
            raise ValueError(f"unknown export format {f!r}; use onnx and/or aoti")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    from_bundle = (source / "manifest.json").is_file()
    if from_bundle:
        b = load_bundle(source)
        mpp = b.mpp if mpp is None else mpp
        tile_size = tile_size or b.tile_size
        card = card if card is not None else b.file("card.md").read_text() if "card.md" in b.manifest["files"] else None
    if mpp is None or not (mpp > 0):
        raise ValueError(f"--mpp must be a positive number of microns per pixel, got {mpp}")
    tile = int(tile_size or 224)
    if not 16 <= tile <= 4096:
        raise ValueError(f"--tile-size must be 16..4096 pixels, got {tile}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty directory; choose a new bundle directory")
    if from_bundle:
        model, prep = b.model(), b.preprocessing
        config = {"class_names": b.class_names, "model": b.manifest["model"]}
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


@dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def tile_size(self) -> int:
        return int(self.manifest["tile_size"])

    @property
    def mpp(self) -> float:
        return float(self.manifest["mpp"])

    @property
    def model_id(self) -> str:
        """Short, content-derived id: the same weights give the same id wherever they are."""
        return f"{self.path.name}@{self.manifest['files']['weights.safetensors'][:12]}"

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.manifest["preprocessing"])

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, fmt: str) -> bool:
        return fmt in self.manifest.get("formats", {})

    def model(self) -> nn.Module:
        from safetensors.torch import load_file

        from .config import ModelConfig
        from .model.saganet import SagaNet

        model = SagaNet(ModelConfig.from_dict(self.manifest["model"]))
        model.load_state_dict(load_file(str(self.file("weights.safetensors"))))
        return model.eval()


_REQUIRED = {"format": str, "format_version": int, "class_names": list, "tile_size": int, "mpp": (int, float),
             "preprocessing": dict, "model": dict, "formats": dict, "files": dict}


def _require_regular(path: Path, missing: str) -> None:
    """A bundle file is a regular file inside the bundle: a symbolic link could lead out of it, and a
    FIFO or a device (/dev/zero) would block or never end a read. (csrc/engine.cpp does the same.)"""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise BundleError(f"{path}: {missing}") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot be read ({e.strerror})") from None
    if stat.S_ISLNK(mode):
        raise BundleError(f"{path}: is a symbolic link; bundle files must be regular files inside the bundle")
    if not stat.S_ISREG(mode):
        raise BundleError(f"{path}: is not a regular file (a FIFO, device or folder); refused")


def load_bundle(path, verify: bool = True) -> Bundle:
    """Open BUNDLE `path`; with `verify`, every file's sha256 is checked against the manifest."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not path.is_dir():
        raise BundleError(f"{path}: not a directory; a bundle is the folder `saganet export` writes")
    _require_regular(mpath, "no manifest.json; not a saganet bundle")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: not valid JSON ({e})") from None
    except RecursionError:
        raise BundleError(f"{mpath}: nested too deeply to be a manifest") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise BundleError(f"{mpath}: not a readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{mpath}: format is {found!r}, expected {FORMAT!r}; not a saganet bundle")
    for key, typ in _REQUIRED.items():
        if not isinstance(manifest.get(key), typ):
            raise BundleError(f"{mpath}: field {key!r} is missing or not a {typ if isinstance(typ, type) else typ[0]}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise BundleError(f"{mpath}: format_version {manifest['format_version']} was written by a newer saganet; "
                          f"this one ({__version__}) reads up to {FORMAT_VERSION}")
    if manifest["format_version"] < 1:
        raise BundleError(f"{mpath}: format_version {manifest['format_version']} is not valid")
    if manifest["format_version"] >= 2 and verify:
        dpath = path / "manifest.sha256"
        _require_regular(dpath, "missing; it holds the manifest's sha256 (format_version 2)")
        if dpath.read_text(encoding="ascii", errors="replace").strip() != sha256_file(mpath):
            raise BundleError(f"{mpath}: changed after export (its sha256 is not the one in manifest.sha256); "
                              f"re-export the bundle rather than edit it")
    if not manifest["mpp"] > 0 or manifest["tile_size"] < 1 or not manifest["class_names"]:
        raise BundleError(f"{mpath}: mpp, tile_size and class_names must be positive / non-empty")
    if manifest["model"].get("num_classes", len(manifest["class_names"])) != len(manifest["class_names"]):
        raise BundleError(f"{mpath}: {len(manifest['class_names'])} class_names for a model of "
                          f"{manifest['model'].get('num_classes')} classes")
    for name in ["weights.safetensors"] + [f["file"] for f in manifest["formats"].values()]:
        if name not in manifest["files"]:
            raise BundleError(f"{mpath}: {name} is not listed under 'files'")
    for name, digest in manifest["files"].items():
        f = path / name
        if Path(name).name != name or name in ("", ".", ".."):
            raise BundleError(f"{mpath}: file name {name!r} is not a plain name inside the bundle")
        _require_regular(f, "listed in the manifest but missing")
        if verify and sha256_file(f) != digest:
            raise BundleError(f"{f}: sha256 does not match the manifest; the file is damaged or was changed")
    return Bundle(path, manifest)
