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

from .reader import SlideError, open_reader, thumbnail_tissue
from .tiler import tile_grid
from .writers import GeoJSONWriter, TileTable, file_part, write_heatmaps, write_json


@dataclass(frozen=True)
class PredictConfig:
    batch_size: int = 8  # fastest on our 2-core CPUs (activations stay in cache); raise it on bigger machines
    workers: int = 2  # threads that read and preprocess tiles while the engine runs
    min_tissue: float = 0.25  # share of a tile that must be tissue on the thumbnail to be predicted
    min_valid: float = 0.05  # share of valid-area pixels a tile needs to count in the slide call
    mpp: float | None = None  # level-0 microns per pixel; required when the slide does not say
    thumbnail_side: int = 1024
    progress: bool = True

    def check(self) -> None:
        if not 1 <= self.batch_size <= 1024:
            raise ValueError(f"--batch-size must be 1..1024, got {self.batch_size}")
        if not 1 <= self.workers <= 64:
            raise ValueError(f"--workers must be 1..64, got {self.workers}")
        if self.mpp is not None and not self.mpp > 0:
            raise ValueError(f"--mpp must be a positive number of microns per pixel, got {self.mpp}")


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


def predict_slide(engine, path, out_dir, cfg: PredictConfig = PredictConfig(), on_progress=None,
                  should_stop=None) -> dict:
    """Predict one slide into `out_dir`; returns the report (also written as report.json, last).
    `on_progress(done, total)` is called after every batch; `should_stop()` is asked before every
    batch and, when true, raises Interrupted (used by the server's graceful shutdown)."""
    cfg.check()
    path, out_dir = Path(path), Path(out_dir)
    t0 = time.perf_counter()
    with open_reader(path) as reader:
        if cfg.mpp is not None:
            mpp, mpp_source = cfg.mpp, "--mpp"
        elif reader.mpp is not None:
            mpp, mpp_source = reader.mpp, "slide"
        else:
            raise SlideError(f"{path}: the file has no microns-per-pixel value; pass it explicitly (--mpp)")
        thumb = reader.thumbnail(cfg.thumbnail_side)
        grid = tile_grid(reader.dimensions, mpp, engine.bundle.mpp, engine.tile_size, thumbnail_tissue(thumb),
                         cfg.min_tissue)
        if grid.read_size < 1:
            raise SlideError(f"{path}: at {mpp} um/px a model tile is under one pixel; check --mpp")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").unlink(missing_ok=True)  # an older report must not vouch for new outputs
        Image.fromarray(thumb).save(out_dir / "thumbnail.png")
        n, k = len(grid.cells), len(engine.class_names)
        probs, valid = np.zeros((n, k), np.float32), np.zeros(n, np.float32)
        table = TileTable(out_dir / "tiles.csv", engine.class_names)
        geojson = GeoJSONWriter(out_dir / "tiles.geojson", engine.class_names)
        complete = False
        wait_seconds = 0.0
        t_loop = time.perf_counter()
        try:
            # Python preprocessing is single-threaded: it runs in the workers, beside inference. The
            # native engine's C++ preprocessing uses every core: there it runs between batches, and
            # the workers only read (more threads than cores would slow both down).
            in_workers = not engine.preprocesses_in_parallel

            def load(start: int):
                idx = range(start, min(start + cfg.batch_size, n))
                tiles = np.stack([reader.read(*grid.origin(i), grid.read_size, grid.tile) for i in idx])
                return idx, engine.preprocess(tiles) if in_workers else tiles

            bar = _progress(n, path.name, cfg.progress)
            done = 0
            with ThreadPoolExecutor(cfg.workers, thread_name_prefix="saganet-tiles") as pool:
                starts = iter(range(0, n, cfg.batch_size))
                pending = deque(pool.submit(load, s) for _, s in zip(range(cfg.workers + 1), starts))
                while pending:
                    if should_stop is not None and should_stop():
                        for f in pending:
                            f.cancel()
                        raise Interrupted(f"{path}: stopped after {done} of {n} tiles")
                    w = time.perf_counter()
                    idx, loaded = pending.popleft().result()
                    wait_seconds += time.perf_counter() - w
                    image, mask = loaded if in_workers else engine.preprocess(loaded)
                    for s in starts:  # keep the workers busy before the engine takes the cores
                        pending.append(pool.submit(load, s))
                        break
                    pred = engine.run(image, mask)
                    for j, i in enumerate(idx):
                        x, y = grid.origin(i)
                        probs[i], valid[i] = pred.probs[j], pred.valid_fraction[j]
                        table.write(x, y, grid.read_size, valid[i], probs[i])
                        geojson.write(x, y, grid.read_size, valid[i], probs[i])
                    bar.update(len(idx))
                    done += len(idx)
                    if on_progress is not None:
                        on_progress(done, n)
            bar.close()
            complete = True
            loop_seconds = time.perf_counter() - t_loop
        finally:
            table.close(complete)
            geojson.close(complete)
        heatmaps = write_heatmaps(out_dir, thumb, reader.dimensions, grid, probs, engine.class_names)
        seconds = time.perf_counter() - t0
        report = {
            "slide": str(path), "reader": reader.kind, "dimensions": list(reader.dimensions),
            "mpp": mpp, "mpp_source": mpp_source,
            "model": engine.bundle.model_id, "backend": engine.backend, "model_mpp": engine.bundle.mpp,
            "tile_size": grid.tile, "tile_size_level0": grid.read_size, "grid": [grid.cols, grid.rows],
            "tiles": n, "call": slide_call(probs, valid, engine.class_names, cfg.min_valid),
            "seconds": round(seconds, 3), "tile_seconds": round(loop_seconds, 3),
            "tiles_per_second": round(n / loop_seconds, 2) if loop_seconds > 0 else None,
            "seconds_engine_waited_for_tiles": round(wait_seconds, 3),
            "peak_rss_mb": _peak_rss_mb(),
            "settings": {k: v for k, v in asdict(cfg).items() if k != "progress"},
            "outputs": {"tiles": "tiles.csv", "geojson": "tiles.geojson", "heatmaps": heatmaps, "thumbnail": "thumbnail.png"},
        }
        write_json(out_dir / "report.json", report)  # last: its presence means the slide is complete
        return report


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


def predict_slides(engine, paths, out, cfg: PredictConfig = PredictConfig(), log=print) -> dict:
    """Predict every slide into out/<name>/; a slide that fails is reported and the rest go on.
    Slides already complete for the same model and settings are not redone."""
    cfg.check()
    paths, out = [Path(p) for p in paths], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for p, name in zip(paths, _out_names(paths)):
        d = out / name
        report = _finished(d, engine, cfg)
        if report is not None:
            log(f"{p}: already done in {d}")
            results.append({"slide": str(p), "status": "done", "out": str(d), "call": report["call"], "reused": True})
            continue
        try:
            report = predict_slide(engine, p, d, cfg)
        except (SlideError, OSError, ValueError) as e:
            log(f"{p}: FAILED: {e}")
            results.append({"slide": str(p), "status": "failed", "error": str(e)})
            continue
        call = report["call"]
        log(f"{p}: {call['class'] or 'no call'} from {call['tiles_used']} of {report['tiles']} tiles "
            f"({report['tiles_per_second']} tiles/s) -> {d}")
        results.append({"slide": str(p), "status": "done", "out": str(d), "call": call})
    summary = {"model": engine.bundle.model_id, "backend": engine.backend, "backend_choice": engine.choice,
               "slides": results, "failed": [r["slide"] for r in results if r["status"] == "failed"]}
    write_json(out / "summary.json", summary)
    return summary
