"""Engine throughput per backend and batch size on real tiles, and whole-slide prediction end to
end against the pure engine on the same tiles; all in one run, so ratios compare like with like.

Models: the demo bundle (resnet-tiny, 224 px) and a ResNet-18-sized SagaNet (torchvision's
ResNet-18 layout, random weights: speed does not depend on them), each as float32 (every
backend) and as a bfloat16 AOTInductor package (aoti and native). Run: make bench, or
  .venv/bin/python -m pytest benchmarks/test_engine_speed.py --benchmark-only
Read `extra_info` (tiles_per_s) in the report; docs/performance.md records one run.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from shared_data import DEMO_BUNDLE, crc_tiles

from saganet.bundle import load_bundle
from saganet.export import export_bundle
from saganet.engine import Engine, backend_status

BATCHES = (1, 8, 32, 64)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """name -> bundle, exported here so the AOTInductor packages fit this CPU."""
    from saganet.model.saganet import SagaNet, variant_config
    from saganet.config import TrainConfig
    from saganet.run import save_run

    root = tmp_path_factory.mktemp("bench-bundles")
    demo = load_bundle(DEMO_BUNDLE)
    r18 = SagaNet(variant_config("saganet", num_classes=7, backbone="resnet18")).eval()
    save_run(root / "r18-run", r18, demo.class_names, demo.preprocessing, TrainConfig(backbone="resnet18"), {})
    out = {}
    for name, src, mpp in (("tiny", DEMO_BUNDLE, None), ("resnet18", root / "r18-run", demo.mpp)):
        export_bundle(src, root / f"{name}-fp32", mpp=mpp, log=lambda m: None)
        export_bundle(root / f"{name}-fp32", root / f"{name}-bf16", formats=("aoti",), precision="bfloat16",
                      log=lambda m: None)
        out[f"{name}-fp32"], out[f"{name}-bf16"] = load_bundle(root / f"{name}-fp32"), load_bundle(root / f"{name}-bf16")
    return out


@pytest.fixture(scope="session")
def tiles(data_dir):
    t = crc_tiles(data_dir, 64)
    return t


_engines = {}


def _engine(bundle, backend):
    key = (str(bundle.path), backend)
    if key not in _engines:
        _engines[key] = Engine(bundle, backend=backend, threads=2)
    return _engines[key]


CASES = [(m, b, n) for m in ("tiny-fp32", "resnet18-fp32") for b in ("torch", "onnxruntime", "aoti", "native") for n in BATCHES]
CASES += [(m, b, n) for m in ("tiny-bf16", "resnet18-bf16") for b in ("aoti", "native") for n in BATCHES]


@pytest.mark.parametrize("model,backend,batch", CASES)
def test_engine_network(benchmark, bundles, tiles, model, backend, batch):
    """The network alone (engine.run on preprocessed tiles): what the backends differ in."""
    bundle = bundles[model]
    why = backend_status(bundle)[backend]
    if why:
        pytest.skip(f"{backend}: {why}")
    e = _engine(bundle, backend)
    image, mask = e.preprocess(tiles[:batch])
    rounds = max(3, min(20, 64 // batch))
    benchmark.pedantic(e.run, args=(image, mask), rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(model=model, backend=backend, batch=batch,
                                tiles_per_s=round(batch / benchmark.stats.stats.mean, 1))


@pytest.mark.parametrize("model,backend", [(m, b) for m in ("tiny-fp32", "resnet18-fp32", "resnet18-bf16")
                                           for b in ("onnxruntime", "aoti", "native")])
def test_engine_classify(benchmark, bundles, tiles, model, backend):
    """classify at batch 32: preprocessing (valid-area mask, normalisation) plus the network.
    The native backend preprocesses in C++; the others in Python."""
    bundle = bundles[model]
    why = backend_status(bundle)[backend]
    if why:
        pytest.skip(f"{backend}: {why}")
    e = _engine(bundle, backend)
    benchmark.pedantic(e.classify, args=(tiles[:32],), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(model=model, backend=backend, batch=32,
                                tiles_per_s=round(32 / benchmark.stats.stats.mean, 1))


@pytest.mark.parametrize("model", ["tiny-fp32", "resnet18-fp32", "resnet18-bf16"])
def test_slide_end_to_end(benchmark, bundles, data_dir, tmp_path, model):
    """`saganet predict` on cmu_small_region.svs in a fresh process (auto backend), best of 3:
    tile-loop tiles/s against the same backend's classify on the same tiles read beforehand (best
    of 3, same batch size), and the process's peak resident memory (VmHWM)."""
    from saganet.slide.reader import open_reader, thumbnail_tissue
    from saganet.slide.tiler import tile_grid

    slide = data_dir / "wsi" / "cmu_small_region.svs"
    bundle = bundles[model]
    reports = []

    def predict():
        out = tmp_path / f"run{len(reports)}"
        subprocess.run([sys.executable, "-m", "saganet", "predict", str(bundle.path), str(slide), "--out", str(out),
                        "--threads", "2"], check=True, capture_output=True)
        reports.append(json.loads((out / slide.stem / "report.json").read_text()))

    benchmark.pedantic(predict, rounds=3, iterations=1)
    best = max(reports, key=lambda r: r["tiles_per_second"])
    # The pure engine on the very same tiles, read and held in memory first.
    e = _engine(bundle, best["backend"])
    with open_reader(slide) as reader:
        grid = tile_grid(reader.dimensions, reader.mpp, bundle.mpp, bundle.tile_size,
                         thumbnail_tissue(reader.thumbnail(1024)), 0.25)
        same = np.stack([reader.read(*grid.origin(i), grid.read_size, grid.tile) for i in range(len(grid.cells))])
    batch = best["settings"]["batch_size"]
    e.classify(same[:batch])
    engine_tps = 0.0
    for _ in range(3):  # best of 3, as for the end-to-end runs
        t0 = time.perf_counter()
        for s in range(0, len(same), batch):
            e.classify(same[s:s + batch])
        engine_tps = max(engine_tps, len(same) / (time.perf_counter() - t0))
    benchmark.extra_info.update(model=model, backend=best["backend"], tiles=best["tiles"], batch=batch,
                                end_to_end_tiles_per_s=best["tiles_per_second"], engine_tiles_per_s=round(engine_tps, 1),
                                ratio=round(best["tiles_per_second"] / engine_tps, 3),
                                wall_seconds_with_startup=best["seconds"], peak_rss_mb=round(best["peak_rss_mb"]))
