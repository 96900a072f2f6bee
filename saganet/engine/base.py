"""`Engine`: preprocessing shared by every backend, then one backend runs the bundle's network.

A backend is one small module (torch_backend.py, onnxruntime_backend.py, ...) with
`unavailable(bundle) -> str | None` (why it cannot run here, or None) and a `Backend(bundle,
threads)` class that is a `BackendRunner` (below). "Not available here" is a state a backend
reports, never an exception in the middle of a request.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..atomic import atomic_write_text
from ..bundle import Bundle, BundleError, load_bundle
from ..config import BACKENDS
from ..tissue import valid_area_mask
from . import aoti_backend, native_backend, onnxruntime_backend, tensorrt_backend, torch_backend

# Every backend (config.BACKENDS); "auto" times the available ones on a probe batch and keeps the
# fastest, since which one wins depends on the model and the CPU (docs/performance.md).
_MODULES = {"tensorrt": tensorrt_backend, "native": native_backend, "aoti": aoti_backend,
            "onnxruntime": onnxruntime_backend, "torch": torch_backend}
assert tuple(_MODULES) == BACKENDS


class BackendRunner(Protocol):
    """What a backend module's `Backend(bundle, threads)` is."""

    max_batch: int  # the most tiles one call takes (its exported batch range); Engine.run chunks to it
    # uint8 tiles -> (image, mask) in its own code, the same bits as preprocess_tiles, using every
    # core (the native engine's C++); None: the Engine's Python preprocessing
    preprocess: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float32 image (N,3,T,T) and mask (N,1,T,T), N <= max_batch -> probs, scores, gate."""


def default_choice_cache() -> Path:
    """Where "auto" remembers its choice: $SAGANET_CACHE_DIR, else ~/.cache/saganet."""
    return Path(os.environ.get("SAGANET_CACHE_DIR") or Path.home() / ".cache" / "saganet") / "backend-choice.json"


def _machine_key(model_id: str, threads) -> str:
    """The choice holds for one model on one machine and software stack."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    try:
        from importlib.metadata import version

        ort = version("onnxruntime")
    except Exception:
        ort = "none"
    return f"{model_id}|{platform.machine()}|{cpu}|{os.cpu_count()} cpus|torch {torch.__version__}|ort {ort}|threads {threads}"


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


class EngineError(ValueError):
    """Input the engine refuses, or a backend that cannot be used; the message says which and why."""


def backend_status(bundle: Bundle) -> dict[str, str | None]:
    """{backend: None if it can run this bundle here, else the reason it cannot}."""
    status = {}
    for name in BACKENDS:
        try:
            status[name] = _MODULES[name].unavailable(bundle)
        except Exception as e:  # a broken optional library is a reason, not a crash
            status[name] = f"{type(e).__name__}: {e}"
    return status


@dataclass
class Prediction:
    probs: np.ndarray  # (N, K) class probabilities
    lengths: np.ndarray | None  # (N, K) class-vector lengths (length head), else None
    valid_fraction: np.ndarray  # (N,) share of each tile's pixels in the valid-area mask
    gate: np.ndarray | None = None  # (N, h, w) gate maps, on request


class Engine:
    """Engine(bundle, backend="auto").classify(tiles uint8 (N,T,T,3)) -> Prediction.

    "auto" times the available backends once per model and machine and remembers the fastest in
    `choice_cache` (default_choice_cache(); None = time every time); `retime=True` times again.
    Remembering makes a restart pick the same backend (same answers) and saves the timing."""

    def __init__(self, bundle, backend: str = "auto", threads: int | None = None, verify: bool = True,
                 choice_cache: Path | None | str = "default", retime: bool = False):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify=verify)
        self.preprocessing = self.bundle.preprocessing
        self.status = backend_status(self.bundle)
        if backend == "auto":
            cache = default_choice_cache() if choice_cache == "default" else choice_cache
            remembered = None if retime or cache is None else self._remembered(cache, threads)
            if remembered:
                self.backend, self._run, self.choice = remembered
            else:
                self.backend, self._run, self.choice = self._fastest(threads)
                if cache is not None:
                    self._remember(Path(cache), threads)
        elif backend not in BACKENDS:
            raise EngineError(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
        elif self.status[backend] is not None:
            raise EngineError(f"backend {backend!r} cannot run {self.bundle.path} here: {self.status[backend]}")
        else:
            self.backend, self.choice = backend, f"{backend} (asked for)"
            self._run = _MODULES[backend].Backend(self.bundle, threads)

    def _remembered(self, cache, threads):
        """The backend chosen before for this model and machine, loaded; None if there is none,
        or it cannot run here now (then auto times again)."""
        try:
            entry = json.loads(Path(cache).read_text()).get(_machine_key(self.bundle.model_id, threads))
            name = entry["backend"]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None  # no cache, or one that is damaged: time again
        if name not in BACKENDS or self.status[name] is not None:
            return None
        try:
            run = _MODULES[name].Backend(self.bundle, threads)
        except Exception:
            return None
        return name, run, (f"auto: {name}, remembered from {entry.get('choice', 'an earlier timing')} "
                           f"({cache}; --retime-backend to time again)" + self._unavailable_text())

    def _unavailable_text(self) -> str:
        skipped = "; ".join(f"{b}: {self.status[b]}" for b in BACKENDS if self.status[b] is not None)
        return f"; not available: {skipped}" if skipped else ""

    def _remember(self, cache: Path, threads) -> None:
        try:
            known = json.loads(cache.read_text()) if cache.is_file() else {}
            known = known if isinstance(known, dict) else {}
        except (OSError, ValueError):
            known = {}
        known[_machine_key(self.bundle.model_id, threads)] = {"backend": self.backend,
                                                             "choice": self.choice.split("; not available")[0],
                                                             "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache, json.dumps(known, indent=1))
        except OSError:
            pass  # a read-only home: the choice is simply not remembered

    def _fastest(self, threads, probe: int = 8, repeats: int = 3):
        """Load every available backend, time preprocessing + network on one probe batch, keep the
        fastest (the native backend preprocesses in C++, the others in Python)."""
        usable = [b for b in BACKENDS if self.status[b] is None]
        if not usable:
            raise EngineError(f"{self.bundle.path}: no backend can run it here: {self.status}")
        t = self.tile_size
        tiles = np.random.default_rng(0).integers(0, 256, (probe, t, t, 3), dtype=np.uint8)
        speed, loaded = {}, {}
        for name in usable:
            try:
                run = _MODULES[name].Backend(self.bundle, threads)
            except Exception as e:  # one backend that fails to load must not stop the others
                self.status[name] = f"failed to load: {type(e).__name__}: {e}"
                continue
            prep = run.preprocess or (lambda x: preprocess_tiles(x, self.preprocessing))

            def classify():  # what classify costs with this backend: its preprocessing, then the network
                run(*prep(tiles))

            classify()  # warm-up (first-call allocations, lazy initialisation)
            t0 = time.perf_counter()
            for _ in range(repeats):
                classify()
            speed[name] = probe * repeats / (time.perf_counter() - t0)
            loaded[name] = run
        if not speed:
            raise EngineError(f"{self.bundle.path}: no backend could be loaded here: {self.status}")
        best = max(speed, key=speed.get)
        others = ", ".join(f"{b} {v:.0f}" for b, v in speed.items() if b != best)
        choice = (f"auto chose {best}, the fastest here ({speed[best]:.0f} tiles/s on a probe batch of {probe}"
                  + (f"; {others}" if others else "") + ")" + self._unavailable_text())
        return best, loaded[best], choice

    @property
    def preprocesses_in_parallel(self) -> bool:
        """True when preprocessing uses every core (the native engine's C++), False when it is
        single-threaded Python."""
        return self._run.preprocess is not None

    @property
    def tile_size(self) -> int:
        return self.bundle.tile_size

    @property
    def class_names(self) -> list[str]:
        return self.bundle.class_names

    def check_tiles(self, tiles) -> np.ndarray:
        t = self.tile_size
        tiles = np.asarray(tiles)
        if tiles.ndim == 3:
            tiles = tiles[None]
        if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[1:] != (t, t, 3):
            raise EngineError(f"tiles must be uint8 RGB of shape (N, {t}, {t}, 3) for this model "
                              f"({self.bundle.mpp:g} um/px); got {tiles.dtype} {tiles.shape}")
        if len(tiles) == 0:
            raise EngineError("no tiles given")
        return tiles

    def preprocess(self, tiles) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N,T,T,3) -> normalised image (N,3,T,T) and valid-area mask (N,1,T,T), float32."""
        tiles = self.check_tiles(tiles)
        own = self._run.preprocess  # the native engine preprocesses in C++ (same bits)
        return own(tiles) if own else preprocess_tiles(tiles, self.preprocessing)

    def run(self, image: np.ndarray, mask: np.ndarray, return_gate: bool = False) -> Prediction:
        """The network on preprocessed arrays (as from `preprocess`)."""
        image, mask = np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask, np.float32)
        step = self._run.max_batch
        parts = [self._run(image[s:s + step], mask[s:s + step]) for s in range(0, len(image), step)]
        probs, scores, gate = parts[0] if len(parts) == 1 else (np.concatenate([p[i] for p in parts]) for i in range(3))
        if probs.ndim != 2 or probs.shape[1] != len(self.class_names):
            raise BundleError(f"{self.bundle.path}: the network gives {probs.shape[-1]} class scores but the manifest "
                              f"names {len(self.class_names)} classes; the bundle is inconsistent")
        lengths = scores if self.bundle.manifest.head == "length" else None
        return Prediction(probs, lengths, mask.reshape(len(mask), -1).mean(axis=1), gate[:, 0] if return_gate else None)

    def classify(self, tiles, return_gate: bool = False) -> Prediction:
        image, mask = self.preprocess(tiles)
        return self.run(image, mask, return_gate)


def preprocess_tiles(tiles: np.ndarray, prep) -> tuple[np.ndarray, np.ndarray]:
    """The Python preprocessing of every backend but the native one (which does the same in C++)."""
    rgb = np.stack([prep.image(tile) for tile in tiles]) if prep.stain_target is not None else tiles  # scale is 1 in bundles
    mask = np.stack([valid_area_mask(t, prep.mask) for t in rgb]).astype(np.float32)[:, None]
    return prep.to_array(rgb), mask
