"""Whole-slide prediction on a Dask cluster: one LocalCluster (2 worker processes, 1 thread each)
shared by every test of this file, on the real slides; outputs compared byte for byte with a local run."""
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from serve_helpers import Server
from shared_data import DEMO_BUNDLE
from saganet.engine import Engine
from saganet.slide import cluster as cluster_mod
from saganet.slide.cluster import Cluster, parse_address
from saganet.config import PredictConfig
from saganet.slide.pipeline import TIMING_FIELDS, predict_slides

BACKEND = "onnxruntime"  # one backend on the driver and on every worker
CFG = PredictConfig(mpp=0.25, progress=False)  # both slides at 0.25 um/px (TCGA records none): ~100 tiles in all
SLIDES = ("cmu_small_region.svs", "tcga-cr-7395-01a-01-ts1.svs")


@pytest.fixture(scope="module")
def engine():
    return Engine(DEMO_BUNDLE, backend=BACKEND)


@pytest.fixture(scope="module")
def cluster():
    with Cluster("local:2", DEMO_BUNDLE, BACKEND, chunk_tiles=16, log=lambda m: None) as c:
        yield c


@pytest.fixture(scope="module")
def slides(data_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    for name in SLIDES:
        shutil.copy(data_dir / "wsi" / name, d / name)  # copies: the server refuses links that leave its root
    (d / "corrupt.svs").write_bytes(b"II*\x00" + b"\x00" * 64)  # a TIFF header and nothing behind it
    return d


@pytest.fixture(scope="module")
def local_run(engine, slides, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    summary = predict_slides(engine, [slides / n for n in SLIDES], out, CFG, log=lambda m: None)
    assert not summary["failed"]
    return out


def _same_outputs(a: Path, b: Path, names=("cmu_small_region", "tcga-cr-7395-01a-01-ts1")) -> None:
    for name in names:
        files = sorted(p.name for p in (a / name).iterdir())
        assert files == sorted(p.name for p in (b / name).iterdir())
        for f in files:
            if f == "report.json":
                ra, rb = (json.loads((d / name / f).read_text()) for d in (a, b))
                strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_FIELDS}  # noqa: E731
                assert strip(ra) == strip(rb)
            else:
                assert (a / name / f).read_bytes() == (b / name / f).read_bytes(), f


def test_cluster_outputs_equal_the_local_run_and_a_corrupt_slide_fails_alone(engine, cluster, slides, local_run, tmp_path):
    paths = [slides / SLIDES[0], slides / "corrupt.svs", slides / SLIDES[1]]
    summary = predict_slides(engine, paths, tmp_path, CFG, log=lambda m: None, cluster=cluster)
    assert [s["status"] for s in summary["slides"]] == ["done", "failed", "done"]
    assert "corrupt.svs" in summary["slides"][1]["error"] and summary["cluster"] == "local:2"
    _same_outputs(local_run, tmp_path)
    # The driver restarted: finished slides are not redone.
    again = predict_slides(engine, paths, tmp_path, CFG, log=lambda m: None, cluster=cluster)
    assert [s.get("reused", False) for s in again["slides"]] == [True, False, True]


def test_a_worker_killed_mid_slide_loses_nothing(engine, cluster, slides, local_run, tmp_path, monkeypatch):
    pids = list(cluster.client.run(os.getpid).values())
    real = Cluster.results
    killed = []

    def kill_after_first_chunk(chunks, stats):
        for k, item in enumerate(real(chunks, stats)):
            yield item
            if k == 0 and not killed:  # the other chunks of this slide are queued or running
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

    monkeypatch.setattr(Cluster, "results", staticmethod(kill_after_first_chunk))
    summary = predict_slides(engine, [slides / n for n in SLIDES], tmp_path, CFG, log=lambda m: None, cluster=cluster)
    assert killed and [s["status"] for s in summary["slides"]] == ["done", "done"]
    _same_outputs(local_run, tmp_path)
    rows = (tmp_path / "cmu_small_region" / "tiles.csv").read_text().splitlines()
    report = json.loads((tmp_path / "cmu_small_region" / "report.json").read_text())
    assert len(rows) == report["tiles"] + 1  # every tile once, header aside
    cluster.client.wait_for_workers(2, timeout=60)  # the nanny restarted it, with the engine plugin


def test_bundle_uploaded_to_workers_through_the_scheduler_address(engine, cluster, slides, local_run, tmp_path):
    """A second driver connects by tcp:// and sends the bundle's files instead of its path."""
    moved = tmp_path / "bundle-elsewhere"
    shutil.copytree(DEMO_BUNDLE, moved)
    with Cluster(cluster._local.scheduler_address, moved, BACKEND, upload=True, chunk_tiles=16, log=lambda m: None) as c:
        shutil.rmtree(moved)  # the workers hold their own copy now
        summary = predict_slides(engine, [slides / SLIDES[0]], tmp_path / "out", CFG, log=lambda m: None, cluster=c)
        workers = c.client.run(lambda dask_worker: sorted(p.name for p in Path(dask_worker.local_directory).iterdir()))
    assert not summary["failed"]
    assert all(any(n.startswith("saganet-bundle-") for n in names) for names in workers.values())
    _same_outputs(local_run, tmp_path / "out", names=("cmu_small_region",))
    cluster.client.register_plugin(cluster_mod.EnginePlugin(str(DEMO_BUNDLE), BACKEND), name="saganet-engine")


@pytest.mark.parametrize("address", ["local:0", "local:x", "http://host:8786", "host:8786", ""])
def test_bad_cluster_addresses_are_named(address):
    with pytest.raises(ValueError, match="--cluster"):
        parse_address(address)


def test_auto_backend_is_refused_on_the_cluster():
    with pytest.raises(ValueError, match="one backend"):
        Cluster("local:1", DEMO_BUNDLE, "auto")


def test_server_runs_slide_jobs_on_the_cluster(cluster, slides, local_run, tmp_path):
    server = Server(DEMO_BUNDLE, tmp_path / "state", "--backend", BACKEND, "--slide-root", slides,
                    "--cluster", cluster._local.scheduler_address)
    try:
        job = server.client.post("/v1/slides", json={"path": SLIDES[0], "mpp": 0.25}).json()
        done = server.wait_job(job["id"])
        assert done["state"] == "done", done
        tiles = server.client.get(f"/v1/slides/{job['id']}/tiles.csv").content
        assert tiles == (local_run / "cmu_small_region" / "tiles.csv").read_bytes()
    finally:
        assert server.stop()
