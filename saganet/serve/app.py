"""The saganet server (FastAPI): `Settings` are plain data; `create_app` builds one `Server` (engine,
dynamic batcher, job store, metrics) and mounts the routers: tiles.py (/v1/model, /v1/classify),
slides.py (slide jobs), viewer.py (the page and its data), and the probes below. Routes reach the
`Server` through the `server` dependency, so they can be tested in process (TestClient) as well as
against a live server."""
from __future__ import annotations

import asyncio
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .. import __version__
from ..config import PredictConfig
from .batcher import DynamicBatcher
from .jobs import JobRunner, JobStore
from .security import install_guard
from .viewer import JobLibrary, is_public, mount_viewer

MB = 1 << 20


@dataclass(frozen=True)
class Settings:
    model: str
    backend: str = "auto"
    retime_backend: bool = False  # auto: time the backends again instead of using the remembered choice
    max_batch: int = 32
    max_delay_ms: float = 5.0
    slide_root: str | None = None
    state_dir: str = "saganet-state"
    token: str | None = None
    threads: int = 0
    max_queue_tiles: int = 1024  # tiles waiting for the network; beyond: 503 + Retry-After
    max_tiles_per_request: int = 256
    max_classify_mb: int = 64  # body of one /v1/classify request
    max_upload_mb: int = 2048  # one uploaded slide
    max_tile_pixels: int = 4096 * 4096  # decoded size of one tile image (decompression bombs)
    max_plain_pixels: int = 64_000_000  # a plain-image slide (decoded whole by its job: 192 MB of RGB); larger: pyramid TIFF
    request_timeout_s: float = 60.0
    body_idle_s: float = 30.0  # a request body that stalls this long is refused (408)
    slide_batch_size: int = 8
    cluster: str | None = None  # Dask scheduler (tcp://HOST:PORT) or local:N for slide jobs; None = this process
    cluster_upload_bundle: bool = False  # send the bundle's files to the workers instead of its path
    scratch_dir: str | None = None  # this process's temporary folder, removed at shutdown (serve's main sets it)


class _Shared:
    """The engine as slide jobs see it: the network runs under the lock the batcher also takes."""

    def __init__(self, engine, lock):
        self._engine, self._lock = engine, lock

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run(self, *args, **kwargs):
        with self._lock:
            return self._engine.run(*args, **kwargs)


def _log(msg: str) -> None:
    print(f"saganet.serve: {msg}", file=sys.stderr, flush=True)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("saganet_requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("saganet_request_seconds", "request latency", ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_tiles = Histogram("saganet_batch_tiles", "tiles per network batch", registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue_tiles = Gauge("saganet_queue_tiles", "tiles waiting for the network", registry=self.registry)
        self.jobs = Gauge("saganet_jobs", "slide jobs by state", ["state"], registry=self.registry)

    def observe(self, scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        name = route.path if route is not None else "unmatched"
        self.requests.labels(name, str(status)).inc()
        self.latency.labels(name).observe(seconds)


@dataclass
class Server:
    """Everything the routes share."""
    settings: Settings
    engine: object
    batcher: DynamicBatcher
    store: JobStore
    runner: JobRunner
    library: JobLibrary
    metrics: Metrics
    slide_root: Path | None
    ready: bool = False


def server(request: Request) -> Server:
    """The dependency through which every route reaches the server's state."""
    return request.app.state.server


probes = APIRouter()


@probes.get("/healthz")
async def healthz():
    return {"status": "alive"}


@probes.get("/readyz")
async def readyz(srv: Server = Depends(server)):
    if not srv.ready:
        return JSONResponse({"status": "starting"}, 503)
    return {"status": "ready", "model": srv.engine.bundle.model_id, "backend": srv.engine.backend}


@probes.get("/metrics")
async def metrics(srv: Server = Depends(server)):
    srv.metrics.queue_tiles.set(srv.batcher.queued_tiles)
    for k, v in (await asyncio.to_thread(srv.store.counts)).items():
        srv.metrics.jobs.labels(k).set(v)
    return Response(generate_latest(srv.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, engine=None) -> FastAPI:
    from ..engine import Engine
    from . import slides, tiles

    s = settings
    # The server keeps everything in its state dir, the remembered backend choice too: a restart runs
    # the same backend, so a resumed job gives the same answers.
    engine = engine or Engine(s.model, backend=s.backend, threads=s.threads or None, retime=s.retime_backend,
                              choice_cache=Path(s.state_dir) / "backend-choice.json")
    _log(f"model {engine.bundle.model_id}: {engine.choice}")
    metrics_ = Metrics()
    lock = threading.Lock()
    batcher = DynamicBatcher(engine, s.max_batch, s.max_delay_ms / 1000.0, s.max_queue_tiles, lock,
                             on_batch=metrics_.batch_tiles.observe)
    store = JobStore(Path(s.state_dir))
    if store.resumed:
        _log(f"{store.resumed} unfinished job(s) from before go back in the queue")
    cluster = None
    if s.cluster:
        from ..slide.cluster import Cluster

        cluster = Cluster(s.cluster, s.model, engine.backend, upload=s.cluster_upload_bundle, log=_log)
    slide_root = Path(s.slide_root) if s.slide_root else None
    runner = JobRunner(store, _Shared(engine, lock), PredictConfig(batch_size=s.slide_batch_size, progress=False), _log,
                       cluster=cluster, roots=[r for r in (slide_root, store.uploads) if r is not None])
    srv = Server(s, engine, batcher, store, runner, JobLibrary(store, slide_root), metrics_, slide_root)

    async def lifespan(app):
        batcher.start()
        # Warm up (first-call allocations) before saying ready.
        await batcher.submit(np.full((1, engine.tile_size, engine.tile_size, 3), 255, np.uint8))
        runner.start()
        srv.ready = True
        _log("ready")
        yield
        srv.ready = False
        runner.stopping.set()
        runner.wake.set()
        await asyncio.get_running_loop().run_in_executor(None, runner.join)
        await batcher.close()
        if cluster is not None:
            cluster.close()
        if s.scratch_dir:  # here, not after uvicorn returns: it re-raises SIGTERM and never returns
            shutil.rmtree(s.scratch_dir, ignore_errors=True)
        _log("stopped; unfinished slide jobs resume at the next start")

    app = FastAPI(title="saganet", version=__version__, lifespan=lifespan,
                  description="SagaNet tile and whole-slide inference. Demonstration models are not for diagnosis.")
    app.state.server = srv
    install_guard(app, s.token, _log, metrics_.observe, public=is_public)
    app.include_router(probes)
    app.include_router(tiles.router)
    app.include_router(slides.router)
    mount_viewer(app, srv.library, _log)
    return app
