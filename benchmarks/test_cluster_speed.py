"""Whole-slide prediction on a Dask LocalCluster: 8 slides (4 copies of each real slide) with 1
and with 2 single-thread worker processes, in one run, plus what the throughput model of
docs/scaling.md is built from: per-tile cost on a worker, per-task scheduling cost, result bytes per
chunk and the driver's own seconds per slide. Run:
  .venv/bin/python -m pytest benchmarks/test_cluster_speed.py --benchmark-only -s
Read `extra_info` (and the printed line); docs/performance.md records one run.
"""
import json
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from shared_data import DEMO_BUNDLE

from saganet.engine import Engine
from saganet.config import CHUNK_TILES
from saganet.slide.cluster import Cluster
from saganet.config import PredictConfig
from saganet.slide.pipeline import plan_slide, predict_slides, write_outputs
from saganet.slide.reader import open_reader

BACKEND = "onnxruntime"
CFG = PredictConfig(mpp=0.5, progress=False)  # the TCGA slide records no MPP; the CMU slide's is 0.499
RESULTS: dict = {}


@pytest.fixture(scope="module")
def slides(data_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("bench-slides")
    out = []
    for k in range(4):
        for name in ("cmu_small_region.svs", "tcga-cr-7395-01a-01-ts1.svs"):
            dst = d / f"{k}-{name}"
            shutil.copy(data_dir / "wsi" / name, dst)
            out.append(dst)
    return out


@pytest.fixture(scope="module")
def engine():
    return Engine(DEMO_BUNDLE, backend=BACKEND)


def _driver_seconds(engine, slides, out) -> float:
    """The driver's own seconds per slide (thumbnail, grid, writers, heatmaps), with the tile
    results already there: what one driver process costs a slide besides waiting."""
    k = len(engine.class_names)
    t = time.perf_counter()
    for p in slides:
        with open_reader(p) as reader:
            plan = plan_slide(reader, p, engine, CFG)
        n = len(plan.grid.cells)
        batch = [(range(n), np.full((n, k), 1.0 / k, np.float32), np.ones(n, np.float32))]
        write_outputs(engine, plan, out / p.stem, batch, CFG)
    return (time.perf_counter() - t) / len(slides)


@pytest.mark.parametrize("workers", [1, 2])
def test_slides_per_hour(benchmark, engine, slides, tmp_path, workers):
    with Cluster(f"local:{workers}", DEMO_BUNDLE, BACKEND, log=lambda m: None) as cluster:
        cluster.client.run(lambda: None)  # workers up and their engines loaded before the clock starts
        runs = iter(range(10))

        def predict():
            return predict_slides(engine, slides, tmp_path / f"run{next(runs)}", CFG, log=lambda m: None,
                                  cluster=cluster)

        t0 = time.perf_counter()
        summary = benchmark.pedantic(predict, rounds=1, iterations=1)
        seconds = time.perf_counter() - t0
        assert not summary["failed"]
        reports = [json.loads((Path(s["out"]) / "report.json").read_text()) for s in summary["slides"]]
        tiles = sum(r["tiles"] for r in reports)
        RESULTS[workers] = {"seconds": seconds, "tiles": tiles}
        info = {"workers": workers, "slides": len(slides), "tiles": tiles, "seconds": round(seconds, 2),
                "tiles_per_s": round(tiles / seconds, 1), "slides_per_hour": round(len(slides) / seconds * 3600)}
        if workers == 1:
            # Scheduling cost of one task (a round trip through the scheduler for a no-op) and the
            # result of one chunk as it travels (probs and valid fractions of CHUNK_TILES tiles).
            n = 200
            t = time.perf_counter()
            cluster.client.gather(cluster.client.map(lambda i: i, range(n), pure=False))
            info["task_overhead_ms"] = round((time.perf_counter() - t) / n * 1000, 2)
            k = len(engine.class_names)
            chunk = (np.zeros((CHUNK_TILES, k), np.float32), np.zeros(CHUNK_TILES, np.float32))
            info["result_bytes_per_chunk"] = len(pickle.dumps(chunk))
            info["driver_seconds_per_slide"] = round(_driver_seconds(engine, slides, tmp_path / "driver"), 3)
        if 1 in RESULTS and 2 in RESULTS:
            info["speedup_2_vs_1"] = round(RESULTS[1]["seconds"] / RESULTS[2]["seconds"], 2)
        benchmark.extra_info.update(info)
        print(info)
