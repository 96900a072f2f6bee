"""Slide-job routes: submit a slide (a path under --slide-root, or an upload), read a job, cancel it.
Jobs live in SQLite (jobs.py); every store call runs off the event loop."""
from __future__ import annotations

import asyncio
import os
import shutil

from fastapi import APIRouter, Depends, Request

from ..config import MPP_RANGE, mpp_problem
from ..slide.reader import SlideError, probe
from .app import MB, Server, server
from .security import Refused, confine, json_object, read_body, read_form, safe_name

router = APIRouter()


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


def _write_durably(stream, path) -> None:
    """Copy and fsync, in a worker thread: the id is returned only once the upload is on disk."""
    with open(path, "wb") as f:
        shutil.copyfileobj(stream, f, MB)
        f.flush()
        os.fsync(f.fileno())


@router.post("/v1/slides", status_code=202)
async def submit_slide(request: Request, srv: Server = Depends(server)):
    """JSON {"path": "<relative to --slide-root>", "mpp": optional}, or a multipart upload
    (field `file`, optional field `mpp`). `mpp` is needed for slides that do not record it."""
    s, store = srv.settings, srv.store
    ctype = request.headers.get("content-type", "")
    job_id = store.new_id()
    if ctype.startswith("application/json"):
        body = json_object(await read_body(request, 64 * 1024, s.body_idle_s))
        source, uploaded = confine(srv.slide_root, body.get("path")), False
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
            await asyncio.to_thread(_write_durably, upload.file, source)
        finally:
            await form.close()
    else:
        raise Refused(415, "send application/json {\"path\": ...} or multipart/form-data with field `file`")
    try:  # refuse what cannot be read now, not minutes later in the job; off the loop, pixels not decoded
        await asyncio.to_thread(probe, source, s.max_plain_pixels)
    except SlideError as e:
        if uploaded:
            shutil.rmtree(source.parent, ignore_errors=True)
        raise Refused(422, str(e).replace(str(source.parent) + "/", "") if uploaded else str(e)) from None
    await asyncio.to_thread(store.add, job_id, source, name, uploaded, mpp)  # an fsync'ed SQLite write: off the loop
    srv.runner.wake.set()
    return {"id": job_id, "state": "queued", "status_url": f"/v1/slides/{job_id}"}


@router.get("/v1/slides/{job_id}")
async def slide_status(job_id: str, srv: Server = Depends(server)):
    await asyncio.to_thread(srv.library.get, job_id)  # 404 for an unknown or malformed id
    job = await asyncio.to_thread(srv.store.get, job_id)
    out = {k: job[k] for k in ("id", "state", "name", "progress", "created", "updated")}
    if job["state"] == "done":
        out |= job["result"] | {"outputs": {"geojson": f"/v1/slides/{job_id}/geojson", "tiles": f"/v1/slides/{job_id}/tiles.csv",
                                            "heatmaps": {c: f"/v1/slides/{job_id}/heatmap/{c}" for c in srv.engine.class_names}}}
    if job["state"] == "failed":
        out["error"] = job["error"]
    return out

@router.delete("/v1/slides/{job_id}", status_code=202)
async def cancel_slide(job_id: str, srv: Server = Depends(server)):
    """Cancel a queued job at once, or a running one at its next batch (state `cancelling`, then
    `cancelled`); a finished job answers 409."""
    await asyncio.to_thread(srv.library.get, job_id)  # 404 for an unknown or malformed id
    state = await asyncio.to_thread(srv.store.cancel, job_id)
    if state not in ("cancelled", "cancelling"):
        raise Refused(409, f"job {job_id} is {state}; only queued or running jobs can be cancelled")
    return {"id": job_id, "state": state}
