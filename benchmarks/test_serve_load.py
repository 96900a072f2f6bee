"""Load on the server over loopback: 1, 8 and 32 concurrent clients each sending single tiles,
with dynamic batching (--max-batch 32 --max-delay-ms 5) and without (--max-batch 1), in the same
run; and HTTP overhead against the engine in-process at batch 32. Bounded: every load runs for
LOAD_SECONDS. Numbers go to extra_info; docs/performance.md records one run.
"""
import asyncio
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import Server  # noqa: E402
from shared_data import DEMO_BUNDLE, crc_tiles  # noqa: E402

LOAD_SECONDS = 6.0
BACKEND = "native"


@pytest.fixture(scope="module")
def tiles(data_dir):
    return crc_tiles(data_dir, 32)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    batching = Server(DEMO_BUNDLE, root / "a", "--backend", BACKEND, "--max-batch", "32", "--max-delay-ms", "5")
    single = Server(DEMO_BUNDLE, root / "b", "--backend", BACKEND, "--max-batch", "1", "--max-delay-ms", "0")
    yield {"batching": batching, "max-batch-1": single}
    batching.stop()
    single.stop()


async def _load(url: str, tiles: np.ndarray, clients: int, seconds: float):
    latencies = []
    headers = {"content-type": "application/octet-stream"}
    bodies = [t.tobytes() for t in tiles]
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def one_client(k):
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.post("/v1/classify?shape=1,224,224,3", content=bodies[i % len(bodies)], headers=headers)
                assert r.status_code == 200, r.text
                latencies.append(time.perf_counter() - t0)
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "tiles_per_s": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1)}


@pytest.mark.parametrize("clients", [1, 8, 32])
@pytest.mark.parametrize("mode", ["batching", "max-batch-1"])
def test_concurrent_single_tile_clients(benchmark, servers, tiles, mode, clients):
    result = {}

    def run():
        result.update(asyncio.run(_load(servers[mode].url, tiles, clients, LOAD_SECONDS)))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(mode=mode, clients=clients, **result)


def test_http_overhead_at_batch_32(benchmark, servers, tiles):
    """One request of 32 raw tiles through HTTP vs Engine.classify of the same 32 in-process."""
    from saganet.engine import Engine

    engine = Engine(DEMO_BUNDLE, backend=BACKEND, threads=2)
    engine.classify(tiles)
    t0 = time.perf_counter()
    for _ in range(5):
        engine.classify(tiles)
    in_process = 32 * 5 / (time.perf_counter() - t0)
    client = servers["batching"].client

    def post():
        r = client.post("/v1/classify?shape=32,224,224,3", content=tiles.tobytes(),
                        headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200

    post()
    benchmark.pedantic(post, rounds=5, iterations=1)
    over_http = 32 / benchmark.stats.stats.mean
    benchmark.extra_info.update(in_process_tiles_per_s=round(in_process, 1), http_tiles_per_s=round(over_http, 1),
                                http_over_in_process=round(over_http / in_process, 3))


def test_32_single_tile_clients_against_the_engine_in_process(benchmark, servers, tiles):
    """Issue 14's target: the server's throughput under 32 single-tile clients >= 0.8 of
    Engine.classify at batch 32 in-process, measured side by side (in-process, load, in-process)."""
    from saganet.engine import Engine

    engine = Engine(DEMO_BUNDLE, backend=BACKEND, threads=2)
    engine.classify(tiles)

    def in_process(seconds=3.0):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            engine.classify(tiles)
            n += len(tiles)
        return n / (time.perf_counter() - t0)

    before = in_process()
    result = {}
    benchmark.pedantic(lambda: result.update(asyncio.run(_load(servers["batching"].url, tiles, 32, LOAD_SECONDS))),
                       rounds=1, iterations=1)
    after = in_process()
    engine_rate = (before + after) / 2
    benchmark.extra_info.update(engine_batch32_tiles_per_s=round(engine_rate, 1), **result,
                                server_over_engine=round(result["tiles_per_s"] / engine_rate, 3))
