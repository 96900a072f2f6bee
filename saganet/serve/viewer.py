"""The slide viewer: the page (`GET /`), deep-zoom tiles of a slide, its result layers, the tile under
a point, and the downloads. Shared by `python -m saganet.serve` (slides are jobs) and `saganet view`
(slides are the read-only results of `saganet predict`).

Slides and layers are read and encoded in a thread pool, never on the event loop; open slides, JPEG
tiles, layer PNGs and tile tables are kept in small LRU caches. The page, its script and OpenSeadragon
are public (they hold no slide data); every /v1 route is behind the server's token.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ..slide.deepzoom import DeepZoom
from ..slide.reader import PLAIN_SUFFIXES, SLIDE_SUFFIXES, SlideError
from ..slide.results import SlideResult, load_result, png_bytes
from ..slide.writers import class_colours, colormap_rgb
from .security import Refused, inside

STATIC = Path(__file__).with_name("static")
PUBLIC_PREFIXES = ("/static/", "/vendor/")  # with "/": the page and its code, no slide data
MAX_LISTED = 2000  # slides listed from the slide root
JOB_ID = re.compile(r"[0-9a-f]{32}")
RESULT_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
TILE_NAME = re.compile(r"(\d{1,6})_(\d{1,6})\.jpeg")


def is_public(path: str) -> bool:
    return path == "/" or path.startswith(PUBLIC_PREFIXES)


def openseadragon_dir() -> Path | None:
    """OpenSeadragon's build folder: $SAGANET_OPENSEADRAGON, else node_modules beside the package's
    source tree (`npm ci` in the repository), else under the working directory."""
    sub = Path("node_modules/openseadragon/build/openseadragon")
    candidates = [Path(os.environ["SAGANET_OPENSEADRAGON"])] if os.environ.get("SAGANET_OPENSEADRAGON") else []
    candidates += [Path(__file__).resolve().parents[2] / sub, Path.cwd() / sub]
    return next((c for c in candidates if (c / "openseadragon.min.js").is_file()), None)


@dataclass(frozen=True)
class SlideEntry:
    id: str
    name: str
    state: str  # queued, running, done, failed
    progress: float
    source: Path  # the slide file
    out_dir: Path  # its outputs (complete once state is done)
    error: str | None = None

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "state": self.state, "progress": self.progress, "error": self.error}


class JobLibrary:
    """Slides as the server's jobs; their files must lie under the slide root or the state directory."""

    writable = True

    def __init__(self, store, slide_root: Path | None):
        self.store, self.slide_root = store, slide_root
        self._roots = [r.resolve() for r in (slide_root, store.dir) if r is not None]

    def entries(self) -> list[SlideEntry]:
        return [self._entry(job) for job in self.store.recent()]

    def get(self, slide_id: str) -> SlideEntry:
        job = self.store.get(slide_id) if JOB_ID.fullmatch(slide_id) else None
        if job is None:
            raise Refused(404, f"no slide job {slide_id!r}")
        return self._entry(job)

    def _entry(self, job: dict) -> SlideEntry:
        return SlideEntry(job["id"], job["name"], job["state"], job["progress"], Path(job["source"]),
                          self.store.out_dir(job["id"]), job.get("error"))

    def slide_file(self, entry: SlideEntry) -> Path:
        """The slide's file, resolved now (not when the job was submitted)."""
        return inside(entry.source, self._roots, f"the slide of {entry.id} ({entry.name})")

    def root_slides(self) -> list[str]:
        """Slides and images under the slide root (relative paths), not following links out of it."""
        if self.slide_root is None:
            return []
        root, found = self.slide_root.resolve(), []
        suffixes = SLIDE_SUFFIXES | PLAIN_SUFFIXES
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                p = Path(folder) / f
                if f.startswith(".") or p.suffix.lower() not in suffixes:
                    continue
                try:
                    if p.resolve(strict=True).is_relative_to(root) and p.is_file():
                        found.append(p.relative_to(root).as_posix())
                except (OSError, RuntimeError):
                    continue
                if len(found) >= MAX_LISTED:
                    return found
        return found


class ResultsLibrary:
    """Slides as the subfolders of a `saganet predict --out` folder that hold a report.json; read-only.
    The slide file is the one the report names."""

    writable = False

    def __init__(self, results: Path):
        self.results = Path(results).resolve()
        if not self.results.is_dir():
            raise ValueError(f"{results}: not a folder of `saganet predict` results")

    def entries(self) -> list[SlideEntry]:
        names = sorted(p.name for p in self.results.iterdir() if (p / "report.json").is_file())
        return [self.get(n) for n in names if RESULT_ID.fullmatch(n)]

    def get(self, slide_id: str) -> SlideEntry:
        out = self.results / slide_id
        if not RESULT_ID.fullmatch(slide_id) or not (out / "report.json").is_file() or out.resolve().parent != self.results:
            raise Refused(404, f"no slide result {slide_id!r} in {self.results.name}")
        try:
            source = Path(json.loads((out / "report.json").read_text(encoding="utf-8"))["slide"])
        except (OSError, ValueError, KeyError, TypeError):
            raise Refused(422, f"{slide_id}/report.json is not a slide prediction report") from None
        return SlideEntry(slide_id, source.name, "done", 1.0, source, out)

    def slide_file(self, entry: SlideEntry) -> Path:
        if not entry.source.is_file():
            raise Refused(404, f"the slide {entry.source} named by {entry.id}/report.json is not there")
        return entry.source

    def root_slides(self) -> list[str]:
        return []


class _LRU:
    """A small thread-safe LRU; `on_evict` closes what falls out (open slides). A value is made once:
    concurrent requests for a key being made wait for it (two tiles of a new slide open it once)."""

    def __init__(self, size: int, on_evict=None):
        self.size, self.on_evict = size, on_evict
        self._items: OrderedDict = OrderedDict()
        self._making: dict = {}
        self._lock = threading.Lock()

    def peek(self, key):
        """The cached value or None; makes nothing."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            making = self._making.setdefault(key, threading.Lock())
        with making:  # outside the main lock: a slow make must not hold up cached answers
            with self._lock:
                if key in self._items:
                    return self._items[key]
            try:
                value = make()
            finally:
                with self._lock:
                    self._making.pop(key, None)
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.size:
                    _, old = self._items.popitem(last=False)
                    if self.on_evict:
                        self.on_evict(old)
        return value


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def viewer_router(library, readers: int = 4) -> APIRouter:
    """Routes of the viewer over `library` (a JobLibrary or a ResultsLibrary)."""
    router = APIRouter()
    pool = ThreadPoolExecutor(readers, thread_name_prefix="saganet-viewer")
    slides = _LRU(8, on_evict=lambda dz: dz.close())
    tiles = _LRU(2048)  # JPEG bytes, 10-30 KB each
    layers = _LRU(32)  # PNG bytes
    results = _LRU(8)

    async def off_loop(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def deepzoom(entry: SlideEntry) -> DeepZoom:
        path = library.slide_file(entry)

        def open_():
            try:  # a finished prediction's thumbnail serves the coarse levels (nothing decoded whole)
                return DeepZoom(path, entry.out_dir / "thumbnail.png" if entry.state == "done" else None)
            except SlideError as e:
                raise Refused(422, str(e)) from None

        return slides.get((entry.id, str(path)), open_)

    def result(entry: SlideEntry) -> SlideResult:
        if entry.state != "done":
            raise Refused(409, f"slide {entry.id} is {entry.state}; results exist once it is done")

        def load():
            try:
                return load_result(entry.out_dir)
            except ValueError as e:
                raise Refused(422, str(e)) from None

        return results.get(entry.id, load)

    @router.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/v1/slides")
    async def list_slides():
        """Slides: jobs of this server (newest first) or the results being viewed."""
        entries = await off_loop(library.entries)
        return {"slides": [e.public() for e in entries], "writable": library.writable}

    @router.get("/v1/slide-root")
    async def list_slide_root():
        """Slides and images under --slide-root that can be submitted by path."""
        return {"slides": await off_loop(library.root_slides)}

    @router.get("/v1/slides/{slide_id}/layout")
    async def layout(slide_id: str):
        """What the viewer needs to show a slide: size, MPP, pyramid, classes, layers, downloads."""
        entry = library.get(slide_id)
        dz = await off_loop(deepzoom, entry)
        base = f"/v1/slides/{slide_id}"
        out = entry.public() | {"dimensions": list(dz.dimensions), "mpp": dz.mpp, "dzi": f"{base}/dzi"}
        if entry.state == "done":
            r = await off_loop(result, entry)
            rep = r.report
            out |= {
                "mpp": rep["mpp"], "model": rep["model"], "call": rep["call"], "tiles": rep["tiles"],
                "classes": r.classes, "colours": [_hex(c) for c in class_colours(len(r.classes))],
                "grid": {"cols": r.cols, "rows": r.rows, "size0": r.size0, "cell_px": r.cell_px},
                "colormaps": {name: [_hex(c) for c in colormap_rgb(name, [i / 10 for i in range(11)])]
                              for name in ("magma", "viridis")},
                "layers": {"class": f"{base}/layers/class.png", "valid": f"{base}/layers/valid.png",
                           "prob": {c: f"{base}/layers/prob/{c}.png" for c in r.classes}},
                "downloads": {"geojson": f"{base}/geojson", "tiles.csv": f"{base}/tiles.csv",
                              **{f"heatmap {c}": f"{base}/heatmap/{c}" for c in r.classes}},
            }
        return out

    @router.get("/v1/slides/{slide_id}/dzi")
    async def dzi(slide_id: str):
        dz = await off_loop(deepzoom, library.get(slide_id))
        return Response(dz.dzi(), media_type="application/xml")

    @router.get("/v1/slides/{slide_id}/dzi_files/{level}/{name}")
    async def dzi_tile(slide_id: str, level: str, name: str):
        m = TILE_NAME.fullmatch(name)
        if not level.isdigit() or len(level) > 3 or m is None:
            raise Refused(422, f"a tile is /dzi_files/LEVEL/COL_ROW.jpeg with whole numbers, got {level}/{name}")
        key = (slide_id, int(level), int(m[1]), int(m[2]))
        data = tiles.peek(key)  # a cached tile is answered on the loop: only ids that were valid are cached
        if data is None:
            entry = library.get(slide_id)

            def read():
                try:
                    return deepzoom(entry).tile(*key[1:])
                except SlideError as e:
                    raise Refused(422, str(e)) from None
                except ValueError as e:
                    raise Refused(404, str(e)) from None

            data = await off_loop(tiles.get, key, read)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def layer_png(entry: SlideEntry, kind: str, cls: str | None = None) -> Response:
        r = await off_loop(result, entry)
        if cls is not None and cls not in r.classes:
            raise Refused(404, f"no class {cls!r}; classes: {', '.join(r.classes)}")
        data = await off_loop(layers.get, (entry.id, kind, cls), lambda: png_bytes(r.layer(kind, cls)))
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/v1/slides/{slide_id}/layers/{kind}.png")
    async def layer(slide_id: str, kind: str):
        """The class map ('class') or the valid fraction ('valid'): one cell per tile, transparent off tissue."""
        if kind not in ("class", "valid"):
            raise Refused(404, f"no layer {kind!r}; layers: class, valid, prob/<class>")
        return await layer_png(library.get(slide_id), kind)

    @router.get("/v1/slides/{slide_id}/layers/prob/{cls}.png")
    async def prob_layer(slide_id: str, cls: str):
        """The probability of class `cls` per tile (magma, 0..1)."""
        return await layer_png(library.get(slide_id), "prob", cls)

    @router.get("/v1/slides/{slide_id}/tile-at")
    async def tile_at(slide_id: str, x: str, y: str):
        """The tile holding level-0 point (x, y): its call, class probabilities and valid fraction."""
        try:
            px, py = float(x), float(y)
        except ValueError:
            raise Refused(422, f"x and y must be level-0 pixel coordinates, got x={x[:40]!r} y={y[:40]!r}") from None
        r = await off_loop(result, library.get(slide_id))
        w, h = r.report["dimensions"]
        if not (0 <= px < w and 0 <= py < h):
            raise Refused(422, f"({px:g}, {py:g}) is outside the slide (0..{w}, 0..{h})")
        i = r.tile_at(px, py)
        return {"tile": None if i is None else r.tile(i)}

    def output(slide_id: str, file: str, media_type: str) -> FileResponse:
        entry = library.get(slide_id)
        if entry.state != "done":
            raise Refused(409, f"slide {slide_id} is {entry.state}; outputs exist once it is done")
        path = entry.out_dir / file
        if not path.is_file():
            raise Refused(404, f"{file} is missing from the outputs of {slide_id}")
        return FileResponse(path, media_type=media_type, filename=f"{Path(entry.name).stem}-{file}")

    @router.get("/v1/slides/{slide_id}/geojson")
    async def slide_geojson(slide_id: str):
        return output(slide_id, "tiles.geojson", "application/geo+json")

    @router.get("/v1/slides/{slide_id}/tiles.csv")
    async def slide_tiles(slide_id: str):
        return output(slide_id, "tiles.csv", "text/csv")

    @router.get("/v1/slides/{slide_id}/heatmap/{cls}")
    async def slide_heatmap(slide_id: str, cls: str):
        entry = library.get(slide_id)
        if entry.state != "done":
            raise Refused(409, f"slide {slide_id} is {entry.state}; outputs exist once it is done")
        heatmaps = (await off_loop(result, entry)).report["outputs"]["heatmaps"]
        if cls not in heatmaps:
            raise Refused(404, f"no class {cls!r}; classes: {', '.join(heatmaps)}")
        return output(slide_id, heatmaps[cls], "image/png")

    router.pool = pool
    return router


def mount_viewer(app: FastAPI, library, log) -> None:
    """The viewer's routes and files on `app`."""
    class_colours(1)  # imports matplotlib now: an import on a first request holds the GIL for 0.4 s
    router = viewer_router(library)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    osd = openseadragon_dir()
    if osd is None:
        log("viewer: OpenSeadragon not found (run `npm ci` in the repository, or set SAGANET_OPENSEADRAGON); "
            "the page at / cannot show slides")

        @app.get("/vendor/openseadragon/{path:path}", include_in_schema=False)
        async def missing(path: str):
            return JSONResponse({"error": "OpenSeadragon is not installed: run `npm ci` in the repository"}, 404)
    else:
        app.mount("/vendor/openseadragon", StaticFiles(directory=osd), name="openseadragon")
    app.state.viewer_pool = router.pool


def create_viewer_app(results, token: str | None = None, log=print) -> FastAPI:
    """The viewer alone, read-only, over a `saganet predict --out` folder (`saganet view`)."""
    from .. import __version__
    from .security import install_guard

    library = ResultsLibrary(Path(results))
    app = FastAPI(title="saganet viewer", version=__version__,
                  description="Read-only viewer of saganet predict results. Demonstration models are not for diagnosis.")
    install_guard(app, token, log, public=is_public)

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive"}

    mount_viewer(app, library, log)
    return app
