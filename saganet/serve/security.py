"""What the server refuses: unauthenticated calls, paths outside the slide root, bodies over the
limit, and images that are not what they claim (wrong type, truncated, bombs, wrong size)."""
from __future__ import annotations

import hmac
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data import ImageLoadError, to_rgb

TILE_FORMATS = {"PNG", "JPEG"}


class Refused(Exception):
    """A request the server answers with a 4xx: status, message."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def authorised(header: bytes | None, token: str) -> bool:
    """Bearer token check on the header's raw bytes, in constant time (no early exit on the first
    differing byte). A token is UTF-8: `Bearer <token>` must arrive as its UTF-8 bytes."""
    return hmac.compare_digest(header or b"", f"Bearer {token}".encode("utf-8"))


def inside(path: Path, roots, what: str) -> Path:
    """`path` resolved now (links followed), refused unless it is a regular file under one of `roots`:
    a file swapped for a link that leaves them after it was checked is caught here."""
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise Refused(404, f"{what} is gone") from None
    if not any(real.is_relative_to(Path(r).resolve()) for r in roots) or not real.is_file():
        raise Refused(403, f"{what} now points outside the slide root; refused")
    return real


def confine(root: Path | None, relative: object) -> Path:
    """The file `relative` names inside `root`; refuses absolute paths, `..`, NUL bytes, links
    that leave the root, and anything that is not an existing regular file."""
    if root is None:
        raise Refused(403, "path submission is disabled: the server was started without --slide-root")
    if not isinstance(relative, str) or not relative.strip():
        raise Refused(422, "'path' must be a non-empty string relative to the slide root")
    if "\x00" in relative or len(relative) > 4096:
        raise Refused(422, "'path' contains a NUL byte or is too long")
    p = Path(relative)
    if not p.parts or p.is_absolute() or relative.startswith(("/", "\\")) or ":" in p.parts[0]:
        raise Refused(422, f"'path' must be relative to the slide root, got {relative!r}")
    if ".." in p.parts or any(part in ("..", ".") for part in relative.replace("\\", "/").split("/")):
        raise Refused(422, f"'path' must not contain '..' or '.' parts, got {relative!r}")
    try:
        encoded = [part.encode("utf-8") for part in p.parts]
    except UnicodeEncodeError:
        raise Refused(422, f"'path' is not valid Unicode (a lone surrogate?): {relative!r}") from None
    if any(len(part) > 255 for part in encoded):
        raise Refused(422, "'path' has a component longer than 255 bytes")
    root = root.resolve()
    try:
        target = (root / p).resolve()
        is_file = target.is_file()
    except RuntimeError:  # Python < 3.13: a symlink loop
        raise Refused(422, f"'path' {relative!r} is a loop of symbolic links") from None
    except OSError as e:
        raise Refused(422, f"'path' {relative!r} cannot be resolved ({e.strerror or e})") from None
    if not target.is_relative_to(root):
        raise Refused(403, f"'path' {relative!r} leaves the slide root")
    if not is_file:
        raise Refused(404, f"no slide {relative!r} under the slide root")
    return target


def decode_tile(data: bytes, name: str, tile: int, max_pixels: int) -> np.ndarray:
    """A PNG or JPEG upload -> uint8 (tile, tile, 3). Tiles of another size are refused, not
    resized: resampling changes the microns per pixel the model was trained for."""
    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise Refused(415, f"tile {name!r}: not a PNG or JPEG image ({e})") from None
    except Image.DecompressionBombError:
        raise Refused(413, f"tile {name!r}: too many pixels") from None
    if im.format not in TILE_FORMATS:
        raise Refused(415, f"tile {name!r}: {im.format} is not accepted; send PNG or JPEG")
    w, h = im.size
    if w * h > max_pixels:
        raise Refused(413, f"tile {name!r}: {w}x{h} pixels is over the limit of {max_pixels}")
    if (w, h) != (tile, tile):
        raise Refused(422, f"tile {name!r} is {w}x{h}; this model takes {tile}x{tile} tiles at its microns per pixel "
                           f"(resize or re-tile on the client; the server does not resample)")
    try:
        im.load()
        return to_rgb(im, name)  # the one conversion: 16-bit scaled, transparency onto white
    except ImageLoadError as e:
        raise Refused(415, f"tile {name!r}: {e.reason}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise Refused(400, f"tile {name!r}: cannot decode ({e}); truncated or corrupt?") from None


def raw_tiles(data: bytes, shape: str | None, tile: int, max_tiles: int) -> np.ndarray:
    """application/octet-stream body of uint8 RGB with `shape=N,H,W,3` -> (N, H, W, 3)."""
    if not shape:
        raise Refused(422, "raw tiles need their shape: ?shape=N,H,W,3")
    try:
        dims = tuple(int(v) for v in shape.split(","))
    except ValueError:
        raise Refused(422, f"shape must be four integers N,H,W,3, got {shape!r}") from None
    if len(dims) != 4 or dims[3] != 3 or dims[0] < 1:
        raise Refused(422, f"shape must be N,H,W,3 with N >= 1, got {shape!r}")
    if dims[0] > max_tiles:
        raise Refused(413, f"{dims[0]} tiles in one request; the limit is {max_tiles}")
    if dims[1:3] != (tile, tile):
        raise Refused(422, f"tiles are {dims[1]}x{dims[2]}; this model takes {tile}x{tile}")
    if len(data) != int(np.prod(dims)):
        raise Refused(422, f"body has {len(data)} bytes; shape {shape} needs {int(np.prod(dims))}")
    return np.frombuffer(data, np.uint8).reshape(dims)


def json_object(data: bytes) -> dict:
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise Refused(400, "the body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise Refused(400, f"the body is not valid JSON ({e.msg} at {e.pos})") from None
    except RecursionError:
        raise Refused(400, "the body's JSON is nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise Refused(400, f"the body's JSON has a value that cannot be read ({e})") from None
    if not isinstance(obj, dict):
        raise Refused(422, "the body must be a JSON object like {\"path\": \"...\"}")
    return obj


def safe_name(name: str | None, default: str = "upload") -> str:
    """A client's file name reduced to letters, digits, '-', '_', '.' (no directories)."""
    base = (name or "").replace("\\", "/").split("/")[-1]
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in base).lstrip(".")
    return cleaned[:120] or default


async def _limited(request, limit: int, idle: float = 30.0):
    """The request body as it arrives, refused (413) as soon as it passes `limit` bytes: a
    Content-Length that lies or a chunked upload cannot get past it. A body that stalls for
    `idle` seconds is refused (408), so a slow client cannot hold a connection open for good."""
    import asyncio

    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise Refused(413, f"request body over the limit of {limit} bytes")
    received = 0
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), idle)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise Refused(408, f"the request body stalled: no data for {idle:g} s") from None
        received += len(chunk)
        if received > limit:
            raise Refused(413, f"request body over the limit of {limit} bytes")
        yield chunk


async def read_body(request, limit: int, idle: float = 30.0) -> bytes:
    return b"".join([chunk async for chunk in _limited(request, limit, idle)])


async def read_form(request, limit: int, max_files: int, idle: float = 30.0):
    """A multipart form, parsed from the limited stream (files spool to temporary files)."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Refused(415, "expected multipart/form-data")
    try:
        return await MultiPartParser(request.headers, _limited(request, limit, idle), max_files=max_files,
                                     max_fields=max_files + 16).parse()
    except MultiPartException as e:
        raise Refused(400, f"malformed multipart form: {e.message}") from None


class _Guard:
    """Plain ASGI middleware (a BaseHTTPMiddleware costs about 1 ms a request, more than a cached tile)."""

    def __init__(self, app, token, log, observe, public):
        self.app, self.token, self.log, self.observe, self.public = app, token, log, observe, public

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        import time

        from fastapi.responses import JSONResponse

        t0, path, status = time.perf_counter(), scope["path"], [None]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if self.token and path != "/healthz" and not self.public(path) and not authorised(header, self.token):
            await JSONResponse({"error": "missing or wrong bearer token"}, 401,
                               {"WWW-Authenticate": "Bearer"})(scope, receive, send_and_note)
        else:
            try:
                await self.app(scope, receive, send_and_note)
            except Exception as e:  # never a bare 500 page; the message names what failed
                self.log(f"{scope['method']} {path}: {type(e).__name__}: {e}")
                if status[0] is not None:  # the response had started: nothing more can be sent
                    raise
                await JSONResponse({"error": f"internal error: {type(e).__name__}"}, 500)(scope, receive, send_and_note)
        if self.observe is not None:
            self.observe(scope, status[0] or 500, time.perf_counter() - t0)


def install_guard(app, token: str | None, log, observe=None, public=lambda path: False) -> None:
    """On every request: the bearer token (all paths but /healthz and `public(path)`, the viewer's
    page and code), Refused -> its 4xx, any other error -> a 500 that names its type, never a bare
    page. `observe(scope, status, seconds)` records each response (metrics)."""
    from fastapi.responses import JSONResponse

    app.add_middleware(_Guard, token=token, log=log, observe=observe, public=public)

    @app.exception_handler(Refused)
    async def refused(request, e: Refused):
        return JSONResponse({"error": e.message}, e.status, e.headers)
