"""Tile routes: the model's description and /v1/classify (through the dynamic batcher)."""
from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter, Depends, Request

from .app import MB, Server, server
from .batcher import QueueFull, TooLarge
from .security import Refused, decode_tile, raw_tiles, read_body, read_form

router = APIRouter()


@router.get("/v1/model")
async def model_info(srv: Server = Depends(server)):
    b = srv.engine.bundle
    return {"model": b.model_id, "classes": b.class_names, "tile_size": b.tile_size, "mpp": b.mpp, "backend": srv.engine.backend}


@router.post("/v1/classify")
async def classify(request: Request, shape: str | None = None, srv: Server = Depends(server)):
    """Tiles as PNG/JPEG in a multipart form (repeatable field `tiles`), or raw uint8 RGB as
    application/octet-stream with `?shape=N,H,W,3`. Tiles must be the model's size."""
    s, tile = srv.settings, srv.engine.tile_size
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
        probs, lengths, valid = await asyncio.wait_for(srv.batcher.submit(tiles), s.request_timeout_s)
    except QueueFull as e:
        raise Refused(503, f"busy: {e}; retry shortly", {"Retry-After": "1"}) from None
    except TooLarge as e:
        raise Refused(413, f"{e}; send fewer tiles per request") from None
    except ValueError as e:  # the engine refused these tiles (the other requests of the batch are answered)
        raise Refused(422, f"the tiles could not be classified: {e}") from None
    except asyncio.TimeoutError:
        raise Refused(504, f"no result within {s.request_timeout_s} s; the server is overloaded") from None
    return {"model": srv.engine.bundle.model_id, "classes": srv.engine.class_names, "probs": probs.tolist(),
            "lengths": None if lengths is None else lengths.tolist(), "valid_fraction": valid.tolist()}
