"""Routes of the saganet server (FastAPI). Settings are plain data; `create_app` wires the engine,
the dynamic batcher, the job store and the metrics together."""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .. import __version__
from ..config import MPP_RANGE, PredictConfig, mpp_problem
from ..slide.reader import SlideError, probe
from .batcher import DynamicBatcher, QueueFull
from .jobs import JobRunner, JobStore
from .security import Refused, confine, decode_tile, install_guard, json_object, raw_tiles, read_body, read_form, safe_name
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


def _mpp(value) -> float | None:
    """The optional microns per pixel of a submitted slide (for slides that do not record it)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value[:64])
        except ValueError:
            raise Refused(422, f"'mpp' must be a number of microns per pixel, got {value[:64]!r}") from None
    if mpp_problem(value):
        raise Refused(422, f"'mpp' {mpp_problem(value)} (the range is {MPP_RANGE[0]}..{MPP_RANGE[1]})")
    return float(value)


def _log(msg: str) -> None:
    print(f"saganet.serve: {msg}", file=sys.stderr, flush=True)


def create_app(settings: Settings, engine=None) -> FastAPI:
    from ..engine import Engine

    s = settings
    registry = CollectorRegistry()
    requests = Counter("saganet_requests_total", "HTTP requests", ["route", "status"], registry=registry)
    latency = Histogram("saganet_request_seconds", "request latency", ["route"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
    batch_sizes = Histogram("saganet_batch_tiles", "tiles per network batch", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
    queue_depth = Gauge("saganet_queue_tiles", "tiles waiting for the network", registry=registry)
    jobs_gauge = Gauge("saganet_jobs", "slide jobs by state", ["state"], registry=registry)
    state = {"ready": False}

    # The server keeps everything in its state dir, the remembered backend choice too: a restart runs
    # the same backend, so a resumed job gives the same answers.
    engine = engine or Engine(s.model, backend=s.backend, threads=s.threads or None, retime=s.retime_backend,
                              choice_cache=Path(s.state_dir) / "backend-choice.json")
    _log(f"model {engine.bundle.model_id}: {engine.choice}")
    lock = threading.Lock()
    batcher = DynamicBatcher(engine, s.max_batch, s.max_delay_ms / 1000.0, s.max_queue_tiles, lock,
                             on_batch=batch_sizes.observe)
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
    library = JobLibrary(store, slide_root)
    tile = engine.tile_size

    async def lifespan(app):
        batcher.start()
        # Warm up (first-call allocations) before saying ready.
        await batcher.submit(np.full((1, tile, tile, 3), 255, np.uint8))
        runner.start()
        state["ready"] = True
        _log("ready")
        yield
        state["ready"] = False
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

    def observe(scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        name = route.path if route is not None else "unmatched"
        requests.labels(name, str(status)).inc()
        latency.labels(name).observe(seconds)

    install_guard(app, s.token, _log, observe, public=is_public)

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        if not state["ready"]:
            return JSONResponse({"status": "starting"}, 503)
        return {"status": "ready", "model": engine.bundle.model_id, "backend": engine.backend}

    @app.get("/metrics")
    async def metrics():
        queue_depth.set(batcher.queued_tiles)
        for k, v in store.counts().items():
            jobs_gauge.labels(k).set(v)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model")
    async def model_info():
        b = engine.bundle
        return {"model": b.model_id, "classes": b.class_names, "tile_size": tile, "mpp": b.mpp, "backend": engine.backend}

    @app.post("/v1/classify")
    async def classify(request: Request, shape: str | None = None):
        """Tiles as PNG/JPEG in a multipart form (repeatable field `tiles`), or raw uint8 RGB as
        application/octet-stream with `?shape=N,H,W,3`. Tiles must be the model's size."""
        ctype = request.headers.get("content-type", "")
        limit = s.max_classify_mb * MB
        if ctype.startswith("application/octet-stream"):
            tiles = raw_tiles(await read_body(request, limit, s.body_idle_s), shape, tile, s.max_tiles_per_request)
        elif ctype.startswith("multipart/form-data"):
            form = await read_form(request, limit, s.max_tiles_per_request, s.body_idle_s)
            try:
                uploads = form.getlist("tiles")
                if not uploads:
                    raise Refused(422, "no `tiles` field in the form")
                if any(isinstance(u, str) for u in uploads):
                    raise Refused(422, "`tiles` must be files (PNG or JPEG), not text fields")
                tiles = np.stack([decode_tile(await u.read(), u.filename or f"#{i}", tile, s.max_tile_pixels)
                                  for i, u in enumerate(uploads)])
            finally:
                await form.close()
        else:
            raise Refused(415, "send multipart/form-data (field `tiles`) or application/octet-stream with ?shape=N,H,W,3")
        try:
            probs, lengths, valid = await asyncio.wait_for(batcher.submit(tiles), s.request_timeout_s)
        except QueueFull as e:
            raise Refused(503, f"busy: {e}; retry shortly", {"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise Refused(504, f"no result within {s.request_timeout_s} s; the server is overloaded") from None
        return {"model": engine.bundle.model_id, "classes": engine.class_names, "probs": probs.tolist(),
                "lengths": None if lengths is None else lengths.tolist(), "valid_fraction": valid.tolist()}

    @app.post("/v1/slides", status_code=202)
    async def submit_slide(request: Request):
        """JSON {"path": "<relative to --slide-root>", "mpp": optional}, or a multipart upload
        (field `file`, optional field `mpp`). `mpp` is needed for slides that do not record it."""
        ctype = request.headers.get("content-type", "")
        job_id = store.new_id()
        if ctype.startswith("application/json"):
            body = json_object(await read_body(request, 64 * 1024, s.body_idle_s))
            source, uploaded = confine(slide_root, body.get("path")), False
            name, mpp = source.name, _mpp(body.get("mpp"))
        elif ctype.startswith("multipart/form-data"):
            form = await read_form(request, s.max_upload_mb * MB, 1, s.body_idle_s)
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise Refused(422, "no file in the form field `file`")
                mpp = _mpp(form.get("mpp"))
                name = safe_name(upload.filename, "slide")
                folder = store.uploads / job_id
                folder.mkdir()
                source, uploaded = folder / name, True
                with open(source, "wb") as f:
                    await asyncio.get_running_loop().run_in_executor(None, shutil.copyfileobj, upload.file, f, MB)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                await form.close()
        else:
            raise Refused(415, "send application/json {\"path\": ...} or multipart/form-data with field `file`")
        try:  # refuse what cannot be read now, not minutes later in the job; off the loop, pixels not decoded
            await asyncio.get_running_loop().run_in_executor(None, probe, source, s.max_plain_pixels)
        except SlideError as e:
            if uploaded:
                shutil.rmtree(source.parent, ignore_errors=True)
            raise Refused(422, str(e).replace(str(source.parent) + "/", "") if uploaded else str(e)) from None
        store.add(job_id, source, name, uploaded, mpp)
        runner.wake.set()
        return {"id": job_id, "state": "queued", "status_url": f"/v1/slides/{job_id}"}

    @app.get("/v1/slides/{job_id}")
    async def slide_status(job_id: str):
        library.get(job_id)  # 404 for an unknown or malformed id
        job = store.get(job_id)
        out = {k: job[k] for k in ("id", "state", "name", "progress", "created", "updated")}
        if job["state"] == "done":
            out |= job["result"] | {"outputs": {"geojson": f"/v1/slides/{job_id}/geojson", "tiles": f"/v1/slides/{job_id}/tiles.csv",
                                                "heatmaps": {c: f"/v1/slides/{job_id}/heatmap/{c}" for c in engine.class_names}}}
        if job["state"] == "failed":
            out["error"] = job["error"]
        return out

    @app.delete("/v1/slides/{job_id}", status_code=202)
    async def cancel_slide(job_id: str):
        """Cancel a queued job at once, or a running one at its next batch (state `cancelling`, then
        `cancelled`); a finished job answers 409."""
        library.get(job_id)  # 404 for an unknown or malformed id
        state = await asyncio.get_running_loop().run_in_executor(None, store.cancel, job_id)
        if state not in ("cancelled", "cancelling"):
            raise Refused(409, f"job {job_id} is {state}; only queued or running jobs can be cancelled")
        return {"id": job_id, "state": state}

    mount_viewer(app, library, _log)
    app.state.store, app.state.batcher = store, batcher
    return app
