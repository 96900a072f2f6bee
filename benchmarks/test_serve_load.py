"""Load on the server over loopback: 1, 8 and 32 concurrent clients each sending single tiles,
with dynamic batching (--max-batch 32 --max-delay-ms 5) and without (--max-batch 1), in the same
run; and HTTP overhead against the engine in-process at batch 32. Bounded: every load runs for
LOAD_SECONDS. Numbers go to extra_info; docs/performance.md records one run.
"""
import asyncio
import contextlib
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


async def _load(url: str, tiles: np.ndarray, clients: int, seconds: float, client: str = "raw"):
    """`clients` concurrent clients, each posting one tile at a time for `seconds`. client="raw": a
    minimal HTTP/1.1 keep-alive client on asyncio streams (about 0.3 ms of CPU a request), so that the
    load generator, which shares the server's 2 cores, takes little from it; "httpx": httpx.AsyncClient,
    as a Python user would write it (about 6 ms a request)."""
    latencies = []
    bodies = [t.tobytes() for t in tiles]
    stop = time.perf_counter() + seconds
    post = _raw_poster(url) if client == "raw" else _httpx_poster(url, clients)
    async with post as send:
        async def one_client(k):
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await send(k, bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - t0)
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"client": client, "requests": len(lat), "tiles_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1)}


PATH = "/v1/classify?shape=1,224,224,3"


@contextlib.asynccontextmanager
async def _httpx_poster(url: str, clients: int):
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def send(k, body):
            r = await client.post(PATH, content=body, headers={"content-type": "application/octet-stream"})
            assert r.status_code == 200, r.text
        yield send


@contextlib.asynccontextmanager
async def _raw_poster(url: str):
    """One keep-alive connection per client; checks the status line and reads the body by its length."""
    host, port = url.removeprefix("http://").split(":")
    conns = {}

    async def send(k, body):
        if k not in conns:
            conns[k] = await asyncio.open_connection(host, int(port))
        reader, writer = conns[k]
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
        await reader.readexactly(length)

    try:
        yield send
    finally:
        for _, writer in conns.values():
            writer.close()


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
    Engine.classify at batch 32 in-process, measured side by side (in-process, load, in-process).
    The headline load uses the lean raw client; the httpx load beside it shows what a heavy Python
    client on the same 2 cores takes from the server."""
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
    raw = {}
    benchmark.pedantic(lambda: raw.update(asyncio.run(_load(servers["batching"].url, tiles, 32, LOAD_SECONDS))),
                       rounds=1, iterations=1)
    with_httpx = asyncio.run(_load(servers["batching"].url, tiles, 32, LOAD_SECONDS, client="httpx"))
    after = in_process()
    engine_rate = (before + after) / 2
    benchmark.extra_info.update(engine_batch32_tiles_per_s=round(engine_rate, 1), **raw,
                                server_over_engine=round(raw["tiles_per_s"] / engine_rate, 3),
                                httpx_tiles_per_s=with_httpx["tiles_per_s"],
                                httpx_p50_ms=with_httpx["p50_ms"], httpx_p99_ms=with_httpx["p99_ms"],
                                httpx_server_over_engine=round(with_httpx["tiles_per_s"] / engine_rate, 3))
