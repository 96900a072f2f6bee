"""Whole-slide prediction over a Dask cluster (`--cluster local:N | tcp://HOST:PORT`).

Coordinates go out, per-tile results come back. The driver lays each slide's tile grid (thumbnail,
as on one machine) and submits chunks of tile coordinates; a worker process opens the slide itself
(an LRU of open readers), reads, preprocesses and classifies the chunk with an engine it loaded once
(the `EnginePlugin` worker plugin), and returns only the probabilities and valid fractions. The
driver writes them in tile order with the same writers as a local run, so the outputs are the same.

The bundle reaches the workers in one of two ways: by path (default: every worker must see the
bundle folder at the same path, e.g. on shared storage), or uploaded by the driver (`upload=True`,
`--cluster-upload-bundle`: its files travel inside the plugin and each worker unpacks them into its
local directory). Slides are always read by path: workers must see them where the driver does.

A worker that dies takes no slide with it: the scheduler gives its chunks to another worker (Dask
retries a task whose worker died, up to `distributed.scheduler.allowed-failures` times). A chunk
that fails by itself (an unreadable tile) fails its slide alone.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np
from distributed import WorkerPlugin

from ..atomic import atomic_write
from ..config import CHUNK_TILES
from .reader import SlideError, open_reader

READER_CACHE = 8  # open slides kept per worker process

_worker_state: dict = {}  # in each worker process: "engine", and the reader LRU


def parse_address(address: str) -> tuple[str, int | str]:
    """`local:N` -> ("local", N); `tcp://host:port` (or tls://, ws://) -> ("remote", address)."""
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            n = 0
        if not 1 <= n <= 256:
            raise ValueError(f"--cluster {address!r}: local:N needs a number of worker processes from 1 to 256")
        return "local", n
    if address.split("://", 1)[0] in ("tcp", "tls", "ws", "wss", "inproc") and "://" in address:
        return "remote", address
    raise ValueError(f"--cluster {address!r}: use local:N (N worker processes here) or a scheduler address "
                     f"such as tcp://HOST:8786")


def _bundle_files(bundle: Path) -> dict[str, bytes]:
    files = {}
    for p in sorted(Path(bundle).iterdir()):
        if p.is_file() and not p.is_symlink():
            files[p.name] = p.read_bytes()
    return files


class EnginePlugin(WorkerPlugin):
    """Loads the engine once per worker process, from a shared path or from uploaded bundle files."""

    name = "saganet-engine"

    def __init__(self, bundle: str, backend: str, threads: int = 1, files: dict[str, bytes] | None = None):
        self.bundle, self.backend, self.threads, self.files = str(bundle), backend, threads, files

    def setup(self, worker) -> None:
        from ..engine import Engine

        path = Path(self.bundle)
        if self.files is not None:
            digest = hashlib.sha256(b"".join(self.files[k] for k in sorted(self.files))).hexdigest()[:16]
            path = Path(worker.local_directory) / f"saganet-bundle-{digest}"
            if not path.is_dir():
                atomic_write(path, self._write_files)
        _worker_state["engine"] = Engine(path, backend=self.backend, threads=self.threads)
        _worker_state["readers"] = OrderedDict()

    def _write_files(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (folder / Path(name).name).write_bytes(data)

    def teardown(self, worker) -> None:
        for reader in _worker_state.pop("readers", {}).values():
            reader.close()
        _worker_state.pop("engine", None)


def _reader(path: str):
    readers = _worker_state["readers"]
    if path in readers:
        readers.move_to_end(path)
        return readers[path]
    reader = open_reader(path)
    readers[path] = reader
    while len(readers) > READER_CACHE:
        readers.popitem(last=False)[1].close()
    return reader


def classify_chunk(slide: str, origins: list[tuple[int, int]], read_size: int, tile: int,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """On a worker: read and classify tiles at level-0 `origins`, in batches of `batch_size` (the
    local run's batches, so the numbers are the same) -> (probs (n, K), valid fractions (n,))."""
    engine = _worker_state.get("engine")
    if engine is None:
        raise RuntimeError("this Dask worker has no saganet engine: the EnginePlugin did not load it")
    reader = _reader(slide)
    probs, valid = [], []
    for s in range(0, len(origins), batch_size):
        tiles = np.stack([reader.read(x, y, read_size, tile) for x, y in origins[s:s + batch_size]])
        pred = engine.run(*engine.preprocess(tiles))
        probs.append(pred.probs)
        valid.append(pred.valid_fraction)
    return np.concatenate(probs).astype(np.float32), np.concatenate(valid).astype(np.float32)


class Cluster:
    """A Dask client with the engine plugin registered; `local:N` starts N single-thread worker
    processes on this machine (what CI runs)."""

    def __init__(self, address: str, bundle, backend: str, upload: bool = False, chunk_tiles: int = CHUNK_TILES,
                 log=print):
        from dask.distributed import Client, LocalCluster

        kind, where = parse_address(address)
        if backend == "auto":
            raise ValueError("--cluster needs one backend for every worker (e.g. --backend onnxruntime); "
                             "the driver resolves 'auto' before it starts the cluster")
        if not 1 <= chunk_tiles <= 100_000:
            raise ValueError(f"--chunk-tiles must be 1..100000, got {chunk_tiles}")
        self.chunk_tiles, self._local = chunk_tiles, None
        if kind == "local":
            self._local = LocalCluster(n_workers=where, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=logging.ERROR)  # any free port
            self.client = Client(self._local)
        else:
            self.client = Client(where, timeout="30s")
        self.address = address
        try:
            plugin = EnginePlugin(str(Path(bundle).resolve()), backend, files=_bundle_files(bundle) if upload else None)
            self.client.register_plugin(plugin, name=EnginePlugin.name)
        except BaseException:
            self.close()
            raise
        # The scheduler's dashboard when it serves one; its pages need bokeh where the scheduler runs,
        # which we can check only for a local cluster (without it the port serves /metrics only).
        served = "dashboard" in self.client.scheduler_info().get("services", {})
        self.dashboard = self.client.dashboard_link if served and (self._local is None or _has_bokeh()) else None
        log(f"cluster {address}: {len(self.client.scheduler_info()['workers'])} worker(s)"
            + (f", dashboard {self.dashboard}" if self.dashboard else ""))

    def submit(self, plan, batch_size: int) -> list[tuple[range, object]]:
        """Chunks of the slide's tiles, as futures, in tile order. A chunk is a whole number of
        batches, so each batch holds the tiles it holds in a local run."""
        grid, n = plan.grid, len(plan.grid.cells)
        step = max(batch_size, self.chunk_tiles // batch_size * batch_size)
        out = []
        for start in range(0, n, step):
            idx = range(start, min(start + step, n))
            origins = [grid.origin(i) for i in idx]
            fut = self.client.submit(classify_chunk, str(plan.path), origins, grid.read_size, grid.tile, batch_size,
                                     pure=False)
            out.append((idx, fut))
        return out

    @staticmethod
    def results(chunks, stats: dict):
        """Yield (tile indices, probs, valid) per chunk in order; a failed chunk raises SlideError.
        Closing early cancels what is left."""
        from distributed import KilledWorker

        pending = deque(chunks)
        try:
            while pending:
                idx, fut = pending[0]
                t = time.perf_counter()
                try:
                    probs, valid = fut.result()
                except KilledWorker as e:
                    raise SlideError(f"tiles {idx.start}-{idx.stop - 1}: the workers running them died ({e})") from None
                except (SlideError, OSError, ValueError) as e:
                    raise SlideError(str(e)) from None
                stats["waited"] = stats.get("waited", 0.0) + time.perf_counter() - t
                pending.popleft()
                yield idx, probs, valid
        finally:
            for _, fut in pending:
                fut.cancel()

    def close(self) -> None:
        self.client.close()
        if self._local is not None:
            self._local.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def predict_slide_on(cluster: Cluster, engine, path, out_dir, cfg, on_progress=None, should_stop=None) -> dict:
    """`pipeline.predict_slide` with the tiles classified on the cluster (the server's slide jobs)."""
    from .pipeline import plan_slide, write_outputs

    cfg.check()
    path = Path(path)
    with open_reader(path) as reader:
        plan = plan_slide(reader, path, engine, cfg)
    stats: dict = {}
    return write_outputs(engine, plan, out_dir, cluster.results(cluster.submit(plan, cfg.batch_size), stats), cfg,
                         on_progress, should_stop, timing=lambda: {"seconds_waited_for_cluster": round(stats.get("waited", 0.0), 3)})
