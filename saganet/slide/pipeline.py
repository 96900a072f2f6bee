"""Whole-slide prediction: tissue on a thumbnail -> tile grid at the model's MPP -> tiles read and
preprocessed in worker threads, overlapped with batched inference -> streamed writers.

Memory stays bounded: at most `workers + 1` batches are in flight, and only the per-tile
probabilities (N x K floats) are kept for the heatmaps and the slide call.
"""
from __future__ import annotations

import json
import resource
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import PredictConfig, mpp_problem
from .reader import SlideError, open_reader, thumbnail_tissue
from .tiler import Grid, tile_grid
from .writers import PNG_LEVEL, GeoJSONWriter, TileTable, file_part, write_heatmaps, write_json

MAX_UPSAMPLING = 4  # a slide may be at most this much coarser than the model (tiles are enlarged up to 4x)


def slide_call(probs: np.ndarray, valid: np.ndarray, class_names, min_valid: float) -> dict:
    """Slide-level probabilities: the mean of tile probabilities weighted by each tile's valid
    fraction, over tiles with at least `min_valid` valid area."""
    if len(valid) == 0:
        return {"class": None, "probs": None, "tiles_used": 0, "reason": "no tissue: no tile of the grid is tissue on the thumbnail"}
    used = valid >= min_valid
    if not used.any():
        return {"class": None, "probs": None, "tiles_used": 0,
                "reason": f"no tile has a valid-area fraction of at least {min_valid}"}
    p = (probs[used] * valid[used, None]).sum(0) / valid[used].sum()
    return {"class": class_names[int(np.argmax(p))], "probs": {c: float(v) for c, v in zip(class_names, p)},
            "tiles_used": int(used.sum())}


class Interrupted(Exception):
    """`should_stop` asked the prediction to stop; nothing complete-looking was written."""


@dataclass
class SlidePlan:
    """What the driver knows of a slide before any tile is read: where its tiles are."""
    path: Path
    reader_kind: str
    dimensions: tuple[int, int]
    mpp: float
    mpp_source: str
    thumb: np.ndarray
    grid: Grid
    started: float  # perf_counter() when planning began: the report's seconds count from here


def plan_slide(reader, path: Path, engine, cfg: PredictConfig) -> SlidePlan:
    """MPP, thumbnail and tissue grid of an open slide at the model's MPP and tile size."""
    t0 = time.perf_counter()
    if cfg.mpp is not None:
        mpp, mpp_source = cfg.mpp, "--mpp"
    elif reader.mpp is not None:
        mpp, mpp_source = reader.mpp, "slide"
    else:
        raise SlideError(f"{path}: the file has no microns-per-pixel value; pass it explicitly (--mpp)")
    if mpp_problem(mpp):
        raise SlideError(f"{path}: microns per pixel ({mpp_source}) {mpp_problem(mpp)}")
    if mpp > MAX_UPSAMPLING * engine.bundle.mpp:
        raise SlideError(f"{path}: at {mpp:g} um/px the slide is over {MAX_UPSAMPLING}x coarser than the model's "
                         f"{engine.bundle.mpp:g} um/px; its tiles would be mostly interpolation (check --mpp)")
    thumb = reader.thumbnail(cfg.thumbnail_side)
    grid = tile_grid(reader.dimensions, mpp, engine.bundle.mpp, engine.tile_size, thumbnail_tissue(thumb), cfg.min_tissue)
    if len(grid.cells) > cfg.max_tiles:
        raise SlideError(f"{path}: {len(grid.cells):,} tiles at {mpp:g} um/px is over the limit of {cfg.max_tiles:,} "
                         f"per slide (--max-tiles)")
    return SlidePlan(Path(path), reader.kind, tuple(reader.dimensions), mpp, mpp_source, thumb, grid, t0)


def local_batches(engine, reader, grid: Grid, cfg: PredictConfig, stats: dict):
    """(tile indices, probs, valid fractions) per batch of cfg.batch_size, in tile order: tiles read
    (and, for Python backends, preprocessed) in worker threads, overlapped with inference. Adds the
    seconds the engine waited for tiles to stats["waited"]."""
    n = len(grid.cells)
    # Python preprocessing is single-threaded: it runs in the workers, beside inference. The native
    # engine's C++ preprocessing uses every core: there it runs between batches, and the workers
    # only read (more threads than cores would slow both down).
    in_workers = not engine.preprocesses_in_parallel

    def load(start: int):
        idx = range(start, min(start + cfg.batch_size, n))
        tiles = np.stack([reader.read(*grid.origin(i), grid.read_size, grid.tile) for i in idx])
        return idx, engine.preprocess(tiles) if in_workers else tiles

    with ThreadPoolExecutor(cfg.workers, thread_name_prefix="saganet-tiles") as pool:
        starts = iter(range(0, n, cfg.batch_size))
        pending = deque(pool.submit(load, s) for _, s in zip(range(cfg.workers + 1), starts))
        try:
            while pending:
                w = time.perf_counter()
                idx, loaded = pending.popleft().result()
                stats["waited"] = stats.get("waited", 0.0) + time.perf_counter() - w
                image, mask = loaded if in_workers else engine.preprocess(loaded)
                for s in starts:  # keep the workers busy before the engine takes the cores
                    pending.append(pool.submit(load, s))
                    break
                pred = engine.run(image, mask)
                yield idx, pred.probs, pred.valid_fraction
        finally:  # stopped early: drop what has not started
            for f in pending:
                f.cancel()


def write_outputs(engine, plan: SlidePlan, out_dir: Path, batches, cfg: PredictConfig, on_progress=None,
                  should_stop=None, timing=None) -> dict:
    """Stream (tile indices, probs, valid) batches, in tile order, into the tile table and GeoJSON;
    then heatmaps and report.json (last: its presence means the slide is complete). `timing()`, when
    given, returns fields to add to the report (how long the source of batches waited)."""
    out_dir = Path(out_dir)
    grid, path = plan.grid, plan.path
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").unlink(missing_ok=True)  # an older report must not vouch for new outputs
    Image.fromarray(plan.thumb).save(out_dir / "thumbnail.png", compress_level=PNG_LEVEL)
    n, k = len(grid.cells), len(engine.class_names)
    probs, valid = np.zeros((n, k), np.float32), np.zeros(n, np.float32)
    table = TileTable(out_dir / "tiles.csv", engine.class_names)
    geojson = GeoJSONWriter(out_dir / "tiles.geojson", engine.class_names)
    complete, done = False, 0
    t_loop = time.perf_counter()
    bar = _progress(n, path.name, cfg.progress)
    try:
        for idx, p, v in batches:
            for j, i in enumerate(idx):
                x, y = grid.origin(i)
                probs[i], valid[i] = p[j], v[j]
                table.write(x, y, grid.read_size, valid[i], probs[i])
                geojson.write(x, y, grid.read_size, valid[i], probs[i])
            bar.update(len(idx))
            done += len(idx)
            if on_progress is not None:
                on_progress(done, n)
            if should_stop is not None and should_stop() and done < n:
                raise Interrupted(f"{path}: stopped after {done} of {n} tiles")
        if done != n:
            raise SlideError(f"{path}: {done} of {n} tiles came back")
        complete = True
        loop_seconds = time.perf_counter() - t_loop
    finally:
        bar.close()
        if hasattr(batches, "close"):
            batches.close()
        table.close(complete)
        geojson.close(complete)
    heatmaps = write_heatmaps(out_dir, plan.thumb, plan.dimensions, grid, probs, engine.class_names,
                              engine.bundle.model_id)
    report = {
        "slide": str(path), "reader": plan.reader_kind, "dimensions": list(plan.dimensions),
        "mpp": plan.mpp, "mpp_source": plan.mpp_source,
        "model": engine.bundle.model_id, "backend": engine.backend, "model_mpp": engine.bundle.mpp,
        "tile_size": grid.tile, "tile_size_level0": grid.read_size, "grid": [grid.cols, grid.rows],
        "tiles": n, "call": slide_call(probs, valid, engine.class_names, cfg.min_valid),
        "seconds": round(time.perf_counter() - plan.started, 3), "tile_seconds": round(loop_seconds, 3),
        "tiles_per_second": round(n / loop_seconds, 2) if loop_seconds > 0 else None,
        **(timing() if timing else {}),
        "peak_rss_mb": _peak_rss_mb(),
        "settings": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "outputs": {"tiles": "tiles.csv", "geojson": "tiles.geojson", "heatmaps": heatmaps, "thumbnail": "thumbnail.png"},
    }
    write_json(out_dir / "report.json", report)
    return report


# Report fields that differ between two runs of the same slide (time and memory), nothing else.
TIMING_FIELDS = ("seconds", "tile_seconds", "tiles_per_second", "seconds_engine_waited_for_tiles",
                 "seconds_waited_for_cluster", "peak_rss_mb")


def predict_slide(engine, path, out_dir, cfg: PredictConfig = PredictConfig(), on_progress=None,
                  should_stop=None) -> dict:
    """Predict one slide into `out_dir` on this machine; returns the report (also written as
    report.json, last). `on_progress(done, total)` is called after every batch; `should_stop()` is
    asked after every batch and, when true, raises Interrupted (the server's graceful shutdown)."""
    cfg.check()
    path = Path(path)
    with open_reader(path) as reader:
        plan = plan_slide(reader, path, engine, cfg)
        stats: dict = {}
        return write_outputs(engine, plan, out_dir, local_batches(engine, reader, plan.grid, cfg, stats), cfg,
                             on_progress, should_stop,
                             timing=lambda: {"seconds_engine_waited_for_tiles": round(stats.get("waited", 0.0), 3)})


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (model loading included). VmHWM counts this
    program only; getrusage's maxrss can include the parent's memory at fork (Linux keeps it
    across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _progress(total: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="tile", disable=not enabled, leave=False)


def _out_names(paths: list[Path]) -> list[str]:
    """One output folder name per slide: its stem, numbered when two slides share a stem."""
    names, seen = [], {}
    for p in paths:
        stem = file_part(p.stem, "slide")
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _finished(out_dir: Path, engine, cfg: PredictConfig) -> dict | None:
    """The report of an earlier complete run with the same model and settings, else None."""
    try:
        report = json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    settings = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    if report.get("model") == engine.bundle.model_id and report.get("settings") == settings:
        return report
    return None


def predict_slides(engine, paths, out, cfg: PredictConfig = PredictConfig(), log=print, cluster=None) -> dict:
    """Predict every slide into out/<name>/; a slide that fails is reported and the rest go on.
    Slides already complete for the same model and settings are not redone. With `cluster`
    (slide.cluster.Cluster), tiles are classified on its workers, a few slides ahead of the writing."""
    cfg.check()
    paths, out = [Path(p) for p in paths], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict] = {}
    todo = []
    for i, (p, name) in enumerate(zip(paths, _out_names(paths))):
        report = _finished(out / name, engine, cfg)
        if report is not None:
            log(f"{p}: already done in {out / name}")
            results[i] = {"slide": str(p), "status": "done", "out": str(out / name), "call": report["call"], "reused": True}
        else:
            todo.append((i, p, out / name))

    def done(i, p, d, report):
        call = report["call"]
        log(f"{p}: {call['class'] or 'no call'} from {call['tiles_used']} of {report['tiles']} tiles "
            f"({report['tiles_per_second']} tiles/s) -> {d}")
        results[i] = {"slide": str(p), "status": "done", "out": str(d), "call": call}

    def failed(i, p, e):
        log(f"{p}: FAILED: {e}")
        results[i] = {"slide": str(p), "status": "failed", "error": str(e)}

    if cluster is None:
        for i, p, d in todo:
            try:
                done(i, p, d, predict_slide(engine, p, d, cfg))
            except (SlideError, OSError, ValueError) as e:
                failed(i, p, e)
    else:
        _predict_on_cluster(cluster, engine, todo, cfg, done, failed)
    summary = {"model": engine.bundle.model_id, "backend": engine.backend, "backend_choice": engine.choice,
               "slides": [results[i] for i in sorted(results)],
               "failed": [results[i]["slide"] for i in sorted(results) if results[i]["status"] == "failed"]}
    if cluster is not None:
        summary["cluster"] = cluster.address
    write_json(out / "summary.json", summary)
    return summary


def _predict_on_cluster(cluster, engine, todo, cfg: PredictConfig, done, failed) -> None:
    """Plan and submit slides a few ahead of the one being written, so the workers never wait for
    the driver's thumbnails and heatmaps; one progress bar over all planned tiles."""
    from dataclasses import replace

    lookahead = max(2, 2 * len(cluster.client.scheduler_info()["workers"]))
    quiet = replace(cfg, progress=False)
    bar = _progress(0, "slides on the cluster", cfg.progress)
    window, queue = deque(), iter(todo)

    def plan_next() -> None:
        for i, p, d in queue:
            try:
                with open_reader(p) as reader:
                    plan = plan_slide(reader, p, engine, cfg)
            except (SlideError, OSError, ValueError) as e:
                failed(i, p, e)
                continue
            bar.total += len(plan.grid.cells)
            bar.refresh()
            window.append((i, p, d, plan, cluster.submit(plan, cfg.batch_size)))
            return

    for _ in range(lookahead):
        plan_next()
    while window:
        i, p, d, plan, chunks = window.popleft()
        plan_next()
        stats: dict = {}
        last = {"n": 0}

        def progress(n_done, n_total):
            bar.update(n_done - last["n"])
            last["n"] = n_done

        try:
            report = write_outputs(engine, plan, d, cluster.results(chunks, stats), quiet, on_progress=progress,
                                   timing=lambda: {"seconds_waited_for_cluster": round(stats.get("waited", 0.0), 3)})
        except (SlideError, OSError, ValueError) as e:
            failed(i, p, e)
            continue
        done(i, p, d, report)
    bar.close()
