"""Model bundles: the contract between training and inference, one directory checked on load.

    BUNDLE/manifest.json        format and version, class names, tile size and microns per pixel,
                                preprocessing (normalisation, valid-area mask, stain), model config,
                                sha256 of every other file, what the AOTInductor package needs
    BUNDLE/weights.safetensors  the trained weights (torch and native backends rebuild from these)
    BUNDLE/model.onnx           standard ONNX ops (pure-PyTorch pooling), dynamic batch
    BUNDLE/model.pt2            AOTInductor package for this CPU, calling the fused gate_mask_pool op
    BUNDLE/card.md              the model card (what it was trained on, licence, intended use)

saganet/export.py writes bundles; this module defines the format and reads it (csrc/engine/manifest.cpp
reads the same manifest for the native engine). Every exported graph takes `image` (N,3,T,T) normalised float32 and `mask` (N,1,T,T) valid-area
mask in {0,1}, and returns `probs` (N,K), `scores` (N,K; class-vector lengths for the length
head) and `gate` (N,1,h,w). Preprocessing is not in the graphs: the engine does it, identically
for every backend (saganet.engine).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import stat
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .preprocess import Preprocessing

FORMAT = "saganet-bundle"
FORMAT_VERSION = 2  # 2: manifest.sha256 beside the manifest; model.pt2 records its tile size
PACKAGE_TILE_KEY = "saganet_tile_size"  # in model.pt2's metadata: the tile edge it was compiled for
MAX_BATCH = 1024  # upper bound of the exported graphs' dynamic batch dimension
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni",
              "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


class BundleError(ValueError):
    """A bundle that cannot be used: missing, damaged, foreign or from a newer saganet."""


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
    import torch

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


@dataclass(frozen=True)
class Manifest:
    """manifest.json, parsed and checked in one place (`Manifest.parse`)."""
    format_version: int
    class_names: tuple[str, ...]
    tile_size: int
    mpp: float
    model: dict  # ModelConfig fields
    preprocessing: Preprocessing
    formats: dict  # {"onnx": {...}, "aoti": {...}}: what each compiled form needs
    files: dict  # plain file name -> sha256
    raw: dict  # the whole manifest as written

    @property
    def head(self) -> str:
        return self.model.get("head", "length")

    @classmethod
    def parse(cls, text: str, where) -> "Manifest":
        try:
            m = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(f"{where}: not valid JSON ({e})") from None
        except RecursionError:
            raise BundleError(f"{where}: nested too deeply to be a manifest") from None
        except ValueError as e:  # e.g. an integer of more digits than Python converts
            raise BundleError(f"{where}: not a readable manifest ({e})") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            found = m.get("format") if isinstance(m, dict) else type(m).__name__
            raise BundleError(f"{where}: format is {found!r}, expected {FORMAT!r}; not a saganet bundle")
        for key, typ in _REQUIRED.items():
            if not isinstance(m.get(key), typ) or isinstance(m.get(key), bool):
                raise BundleError(f"{where}: field {key!r} is missing or not a {typ if isinstance(typ, type) else typ[0]}")
        if m["format_version"] > FORMAT_VERSION:
            raise BundleError(f"{where}: format_version {m['format_version']} was written by a newer saganet; "
                              f"this one ({__version__}) reads up to {FORMAT_VERSION}")
        if m["format_version"] < 1:
            raise BundleError(f"{where}: format_version {m['format_version']} is not valid")
        if not 0 < m["mpp"] < float("inf") or not 1 <= m["tile_size"] <= 16384 or not m["class_names"]:
            raise BundleError(f"{where}: mpp, tile_size and class_names must be positive / non-empty")
        if not all(isinstance(c, str) for c in m["class_names"]):
            raise BundleError(f"{where}: class_names must be strings")
        if m["model"].get("num_classes", len(m["class_names"])) != len(m["class_names"]):
            raise BundleError(f"{where}: {len(m['class_names'])} class_names for a model of "
                              f"{m['model'].get('num_classes')} classes")
        for name, digest in m["files"].items():
            if Path(name).name != name or name in ("", ".", "..") or not isinstance(digest, str):
                raise BundleError(f"{where}: file name {name!r} is not a plain name inside the bundle")
        for fmt, info in m["formats"].items():
            if not isinstance(info, dict) or not isinstance(info.get("file"), str):
                raise BundleError(f"{where}: formats.{fmt} must name its file")
        for name in ["weights.safetensors"] + [f["file"] for f in m["formats"].values()]:
            if name not in m["files"]:
                raise BundleError(f"{where}: {name} is not listed under 'files'")
        try:
            prep = Preprocessing.from_dict(m["preprocessing"])
        except (TypeError, KeyError, ValueError) as e:
            raise BundleError(f"{where}: preprocessing is not readable ({e})") from None
        if prep.scale != 1.0:  # the tile grid does the scaling; csrc/engine/manifest.cpp refuses it too
            raise BundleError(f"{where}: preprocessing.scale must be 1 in a bundle, got {prep.scale}")
        return cls(m["format_version"], tuple(m["class_names"]), m["tile_size"], float(m["mpp"]), m["model"], prep,
                   m["formats"], m["files"], m)


_REQUIRED = {"format": str, "format_version": int, "class_names": list, "tile_size": int, "mpp": (int, float),
             "preprocessing": dict, "model": dict, "formats": dict, "files": dict}


@dataclass
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    @property
    def tile_size(self) -> int:
        return self.manifest.tile_size

    @property
    def mpp(self) -> float:
        return self.manifest.mpp

    @property
    def model_id(self) -> str:
        """Short, content-derived id: the same weights give the same id wherever they are."""
        return f"{self.path.name}@{self.manifest.files['weights.safetensors'][:12]}"

    @property
    def preprocessing(self) -> Preprocessing:
        return self.manifest.preprocessing

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, fmt: str) -> bool:
        return fmt in self.manifest.formats

    def model(self):
        """The network as torch eager, rebuilt from the weights."""
        from safetensors.torch import load_file

        from .config import ModelConfig
        from .model.saganet import SagaNet

        model = SagaNet(ModelConfig.from_dict(self.manifest.model))
        model.load_state_dict(load_file(str(self.file("weights.safetensors"))))
        return model.eval()


def _require_regular(path: Path, missing: str) -> None:
    """A bundle file is a regular file inside the bundle: a symbolic link could lead out of it, and a
    FIFO or a device (/dev/zero) would block or never end a read. (csrc/engine/native_engine.cpp does the same.)"""
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
    """Open BUNDLE `path`; with `verify`, the manifest's own digest and every file's sha256 are checked."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not path.is_dir():
        raise BundleError(f"{path}: not a directory; a bundle is the folder `saganet export` writes")
    _require_regular(mpath, "no manifest.json; not a saganet bundle")
    try:
        text = mpath.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{mpath}: not valid JSON ({e})") from None
    manifest = Manifest.parse(text, mpath)
    if manifest.format_version >= 2 and verify:
        dpath = path / "manifest.sha256"
        _require_regular(dpath, "missing; it holds the manifest's sha256 (format_version 2)")
        if dpath.read_text(encoding="ascii", errors="replace").strip() != sha256_file(mpath):
            raise BundleError(f"{mpath}: changed after export (its sha256 is not the one in manifest.sha256); "
                              f"re-export the bundle rather than edit it")
    for name, digest in manifest.files.items():
        f = path / name
        _require_regular(f, "listed in the manifest but missing")
        if verify and sha256_file(f) != digest:
            raise BundleError(f"{f}: sha256 does not match the manifest; the file is damaged or was changed")
    return Bundle(path, manifest)
