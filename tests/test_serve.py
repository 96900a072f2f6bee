"""The server, as real processes on loopback: tiles, slide jobs, metrics, auth, hostile input,
a full queue, SIGTERM and kill -9 during a slide job."""
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_helpers import Server
from shared_data import DEMO_BUNDLE, crc_tiles

from saganet.engine import Engine

SLIDE = "cmu_small_region.svs"


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir):
    s = Server(DEMO_BUNDLE, tmp_path_factory.mktemp("state"), "--slide-root", data_dir / "wsi", "--backend", "onnxruntime")
    yield s
    assert s.stop(), s.log()


@pytest.fixture(scope="module")
def tiles(data_dir):
    return crc_tiles(data_dir, 7)


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_classify_multipart_and_raw_match_the_engine(server, tiles):
    expected = Engine(DEMO_BUNDLE, backend="onnxruntime").classify(tiles).probs
    r = server.client.post("/v1/classify", files=[("tiles", (f"t{i}.png", _png(t), "image/png")) for i, t in enumerate(tiles)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["classes"] == ["ADI", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"] and body["model"].startswith("demo-crc7@")
    np.testing.assert_allclose(body["probs"], expected, atol=1e-5)
    assert np.array(body["lengths"]).shape == (7, 7)
    raw = server.client.post("/v1/classify?shape=7,224,224,3", content=tiles.tobytes(),
                             headers={"content-type": "application/octet-stream"})
    assert raw.status_code == 200, raw.text
    np.testing.assert_allclose(raw.json()["probs"], expected, atol=1e-5)


def test_slide_job_by_path(server):
    r = server.client.post("/v1/slides", json={"path": SLIDE})
    assert r.status_code == 202, r.text
    job = server.wait_job(r.json()["id"])
    assert job["state"] == "done", job
    assert job["call"]["class"] in job["call"]["probs"] and job["tiles"] > 30 and job["progress"] == 1.0
    gj = server.client.get(job["outputs"]["geojson"])
    assert gj.status_code == 200 and len(gj.json()["features"]) == job["tiles"]
    csv = server.client.get(job["outputs"]["tiles"])
    assert csv.status_code == 200 and len(csv.text.strip().splitlines()) == job["tiles"] + 1
    png = server.client.get(job["outputs"]["heatmaps"]["TUM"])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_slide_upload_and_missing_mpp(server, data_dir):
    tcga = data_dir / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
    r = server.client.post("/v1/slides", files={"file": (tcga.name, tcga.read_bytes())})
    assert r.status_code == 202, r.text
    failed = server.wait_job(r.json()["id"])
    assert failed["state"] == "failed" and "pass it explicitly" in failed["error"]
    r = server.client.post("/v1/slides", files={"file": (tcga.name, tcga.read_bytes())}, data={"mpp": "0.25"})
    job = server.wait_job(r.json()["id"])
    assert job["state"] == "done" and job["mpp"] == 0.25, job


def test_metrics_move(server, tiles):
    def scrape():
        text = server.client.get("/metrics").text
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")}

    before = scrape()
    server.client.post("/v1/classify?shape=2,224,224,3", content=tiles[:2].tobytes(),
                       headers={"content-type": "application/octet-stream"})
    after = scrape()
    key = 'saganet_requests_total{route="/v1/classify",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    assert after["saganet_batch_tiles_count"] > before["saganet_batch_tiles_count"]
    assert after["saganet_batch_tiles_sum"] >= before["saganet_batch_tiles_sum"] + 2
    assert "saganet_queue_tiles" in after and 'saganet_jobs{state="done"}' in after


def test_heatmap_of_unknown_class_and_unfinished_job(server):
    r = server.client.post("/v1/slides", json={"path": SLIDE})
    job_id = r.json()["id"]
    early = server.client.get(f"/v1/slides/{job_id}/geojson")
    assert early.status_code in (200, 409)
    server.wait_job(job_id)
    assert server.client.get(f"/v1/slides/{job_id}/heatmap/NOPE").status_code == 404


def test_auth_on_every_endpoint_but_healthz(tmp_path, data_dir):
    s = Server(DEMO_BUNDLE, tmp_path / "state", "--backend", "onnxruntime", token="s3cret-token")
    try:
        import httpx

        anon = httpx.Client(base_url=s.url)
        assert anon.get("/healthz").status_code == 200
        for path in ("/readyz", "/metrics", "/v1/model", "/docs", "/openapi.json", "/v1/slides/" + "0" * 32):
            assert anon.get(path).status_code == 401, path
        assert anon.post("/v1/classify", content=b"x").status_code == 401
        assert anon.get("/readyz", headers={"Authorization": "Bearer s3cret-tokem"}).status_code == 401
        assert anon.get("/readyz", headers={"Authorization": "s3cret-token"}).status_code == 401
        assert anon.get("/readyz", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert s.client.get("/openapi.json").json()["info"]["title"] == "saganet"
    finally:
        assert s.stop(), s.log()


def test_full_queue_answers_503_and_big_uploads_413(tmp_path, tiles):
    s = Server(DEMO_BUNDLE, tmp_path / "state", "--backend", "onnxruntime", "--max-batch", "4", "--max-queue-tiles", "4",
               "--max-upload-mb", "1")
    try:
        def chunked():  # no Content-Length: the limit must hold while the body streams in
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.svs"\r\n\r\n'
            for _ in range(40):
                yield b"x" * 65536
            yield b"\r\n--b--\r\n"

        r = s.client.post("/v1/slides", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and "over the limit" in r.json()["error"]
        assert s.client.post("/v1/slides", files={"file": ("big.svs", b"\x00" * (2 << 20))}).status_code == 413
        assert not any((tmp_path / "state" / "uploads").iterdir())  # nothing half-written is kept
        many = np.concatenate([tiles, tiles])[:5]
        raw = {"content-type": "application/octet-stream"}
        r = s.client.post("/v1/classify?shape=5,224,224,3", content=many.tobytes(), headers=raw)
        assert r.status_code == 413 and "at most 4" in r.text, r.text  # can never fit: not a reason to retry
        from concurrent.futures import ThreadPoolExecutor

        def four(_):  # concurrent clients fill the queue: the ones that find it full may retry
            with httpx.Client(base_url=s.url, timeout=60) as c:
                return c.post("/v1/classify?shape=4,224,224,3", content=many[:4].tobytes(), headers=raw)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(four, range(8)))
        codes = sorted(a.status_code for a in answers)
        assert 200 in codes and 503 in codes and set(codes) == {200, 503}, codes
        assert all(a.headers["retry-after"] == "1" for a in answers if a.status_code == 503)
    finally:
        s.stop()


def _running(s, job_id, timeout=60):
    return s.wait_job(job_id, states=("running", "done", "failed"), timeout=timeout, poll=0.005)


def test_kill_9_during_a_slide_job_then_restart_completes_it(tmp_path, data_dir, server):
    # The uninterrupted result, from the module's server.
    ref = server.wait_job(server.client.post("/v1/slides", json={"path": SLIDE}).json()["id"])
    state = tmp_path / "state"
    a = Server(DEMO_BUNDLE, state, "--slide-root", data_dir / "wsi", "--backend", "onnxruntime")
    job_id = a.client.post("/v1/slides", json={"path": SLIDE}).json()["id"]
    second = a.client.post("/v1/slides", json={"path": SLIDE}).json()["id"]  # still queued at the kill
    assert _running(a, job_id)["state"] == "running"
    a.kill()
    b = Server(DEMO_BUNDLE, state, "--slide-root", data_dir / "wsi", "--backend", "onnxruntime")
    try:
        assert "unfinished job(s) from before go back in the queue" in b.log()
        for jid in (job_id, second):
            job = b.wait_job(jid)
            assert job["state"] == "done", job
            assert job["call"] == ref["call"] and job["tiles"] == ref["tiles"]
        gj = b.client.get(f"/v1/slides/{job_id}/geojson").json()
        assert len(gj["features"]) == ref["tiles"]
    finally:
        b.stop()


def test_20_jobs_survive_three_kill_9(tmp_path, data_dir):
    """Issue 13: durability stays. 20 jobs (paths and uploads), the server killed with SIGKILL three
    times at seeded random moments while they run; after the last restart every job is done, with its
    outputs, and none is lost or duplicated."""
    import random

    rng = random.Random(13)
    state, root = tmp_path / "state", tmp_path / "root"
    root.mkdir()
    field = np.asarray(Image.open(next((data_dir / "crc_val_he_7k_test70" / "TUM").glob("*.jpg"))).convert("RGB"))
    Image.fromarray(np.tile(field, (2, 2, 1))).save(root / "field.png")  # 448 px at 0.5 um/px: 4 tiles
    png = (root / "field.png").read_bytes()
    jobs, resumed = [], []
    s = Server(DEMO_BUNDLE, state, "--slide-root", root, "--backend", "onnxruntime")
    try:
        for kill in range(3):
            for i in range(7 if kill < 2 else 6):
                if (len(jobs) + i) % 2:
                    r = s.client.post("/v1/slides", json={"path": "field.png", "mpp": 0.5})
                else:
                    r = s.client.post("/v1/slides", files={"file": ("field.png", png)}, data={"mpp": "0.5"})
                assert r.status_code == 202, r.text
                jobs.append(r.json()["id"])
            time.sleep(rng.uniform(0.2, 2.0))
            s.kill()
            s = Server(DEMO_BUNDLE, state, "--slide-root", root, "--backend", "onnxruntime")
            resumed.append("go back in the queue" in s.log())
        assert any(resumed), "no kill landed while jobs were unfinished; the test proved nothing"
        assert len(jobs) == 20 == len(set(jobs))
        for job_id in jobs:
            job = s.wait_job(job_id, timeout=180)
            assert job["state"] == "done" and job["tiles"] == 4, job
            assert len(s.client.get(f"/v1/slides/{job_id}/geojson").json()["features"]) == 4
        listed = [e["id"] for e in s.client.get("/v1/slides").json()["slides"]]
        assert sorted(listed) == sorted(jobs)
    finally:
        assert s.stop(), s.log()


def test_sigterm_drains_and_leaves_the_job_resumable(tmp_path, data_dir):
    state = tmp_path / "state"
    a = Server(DEMO_BUNDLE, state, "--slide-root", data_dir / "wsi", "--backend", "onnxruntime")
    ids = [a.client.post("/v1/slides", json={"path": SLIDE}).json()["id"] for _ in range(3)]
    _running(a, ids[0])
    t0 = time.time()
    assert a.stop() and time.time() - t0 < 30
    assert "unfinished slide jobs resume at the next start" in a.log()
    b = Server(DEMO_BUNDLE, state, "--slide-root", data_dir / "wsi", "--backend", "onnxruntime")
    try:
        assert all(b.wait_job(i)["state"] == "done" for i in ids)
    finally:
        b.stop()


def test_a_non_ascii_token_is_utf8(tmp_path):
    """Issue 13, item 9: the token is compared as UTF-8 bytes; the same token in Latin-1 is refused."""
    token = "clé-sécrète-✓"
    s = Server(DEMO_BUNDLE, tmp_path / "state", "--backend", "onnxruntime", token=token)
    try:
        import httpx

        anon = httpx.Client(base_url=s.url)
        assert anon.get("/readyz", headers={"Authorization": b"Bearer " + token.encode("utf-8")}).status_code == 200
        latin = "clé-sécrète".encode("latin-1")
        s2 = anon.get("/readyz", headers={"Authorization": b"Bearer " + latin + "-✓".encode("utf-8")})
        assert s2.status_code == 401
        assert anon.get("/readyz", headers={"Authorization": b"Bearer \xff\xfe"}).status_code == 401
        assert s.alive()
    finally:
        assert s.stop(), s.log()


def test_16_bit_and_transparent_tiles_are_converted_not_clipped(server, tiles):
    """Issue 13, item 7: a 16-bit tile is scaled to 8 bits (was clipped to white); transparent pixels
    are white, as the slide reader and training make them (were black)."""
    engine = Engine(DEMO_BUNDLE, backend="onnxruntime")
    grey16 = (tiles[0].mean(axis=2).astype(np.uint16) * 257)  # 8-bit grey -> the same values in 16 bits
    rgba = np.dstack([tiles[1], np.full((224, 224), 255, np.uint8)])
    rgba[:112, :, 3] = 0
    white = tiles[1].copy()
    white[:112] = 255
    bodies = []
    for array in (grey16, rgba):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        bodies.append(buf.getvalue())
    r = server.client.post("/v1/classify", files=[("tiles", (f"t{i}.png", b, "image/png")) for i, b in enumerate(bodies)])
    assert r.status_code == 200, r.text
    grey8 = np.repeat(tiles[0].mean(axis=2).astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_allclose(r.json()["probs"], engine.classify(np.stack([grey8, white])).probs, atol=1e-5)


def test_confine_refuses_loops_long_names_and_bad_unicode(tmp_path):
    """Issue 13, item 1: each was a 500 (RuntimeError, OSError name too long, UnicodeEncodeError)."""
    from saganet.serve.security import Refused, confine

    root = tmp_path / "root"
    root.mkdir()
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    for bad in ("loop-a", "loop-a/x.svs", "a" * 300 + ".svs", "\ud800.svs", "dir/\udcff/x.svs", "a/" * 2047 + "b"):
        with pytest.raises(Refused) as e:
            confine(root, bad)
        assert 400 <= e.value.status < 500 and e.value.message, bad


def test_a_slide_swapped_for_a_link_after_submission_is_not_read(tmp_path, data_dir):
    """Issue 13, item 3, deterministically: the job's slide is replaced by a link to a file outside the
    root between submission and the job; the job fails, naming why, and never opens the outside file."""
    import shutil

    from saganet.serve.jobs import JobRunner, JobStore
    from saganet.config import PredictConfig

    root, outside = tmp_path / "root", tmp_path / "outside.svs"
    root.mkdir()
    shutil.copy(data_dir / "wsi" / SLIDE, root / "b.svs")
    shutil.copy(data_dir / "wsi" / SLIDE, outside)
    store = JobStore(tmp_path / "state")

    class Engine:  # reached only when the check passes
        def __getattr__(self, name):
            raise ValueError("the engine was reached")

    runner = JobRunner(store, Engine(), PredictConfig(progress=False), log=lambda m: None, roots=[root, store.uploads])
    store.add("a" * 32, root / "b.svs", "b.svs", False)
    store.add("b" * 32, root / "b.svs", "b.svs", False)
    runner._run_one("a" * 32, root / "b.svs", None)
    assert "the engine was reached" in store.get("a" * 32)["error"]  # control: an honest slide gets past the check
    (root / "b.svs").unlink()
    (root / "b.svs").symlink_to(outside)
    runner._run_one("b" * 32, root / "b.svs", None)
    job = store.get("b" * 32)
    assert job["state"] == "failed" and "outside the slide root" in job["error"], job


def test_delete_cancels_queued_and_running_jobs(server, data_dir):
    """Issue 13, item 8: a long job could not be stopped. DELETE cancels a queued job at once and a
    running one at its next batch; finished jobs answer 409, unknown ones 404."""
    tcga = data_dir / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
    long_job = server.client.post("/v1/slides", files={"file": (tcga.name, tcga.read_bytes())},
                                  data={"mpp": "1.0"}).json()["id"]  # about a thousand tiles at 2x coarser than the model
    queued = server.client.post("/v1/slides", json={"path": SLIDE}).json()["id"]
    server.wait_job(long_job, states=("running",), timeout=60)
    r = server.client.delete(f"/v1/slides/{queued}")
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    r = server.client.delete(f"/v1/slides/{long_job}")
    assert r.status_code == 202 and r.json()["state"] == "cancelling", r.text
    job = server.wait_job(long_job, states=("cancelled", "done", "failed"), timeout=60)
    assert job["state"] == "cancelled" and job["progress"] < 1.0, job
    assert server.client.get(f"/v1/slides/{queued}").json()["state"] == "cancelled"
    assert server.client.get(f"/v1/slides/{long_job}/geojson").status_code == 409
    done = server.client.post("/v1/slides", json={"path": SLIDE}).json()["id"]
    assert server.wait_job(done)["state"] == "done"  # the queue goes on after a cancel
    assert server.client.delete(f"/v1/slides/{done}").status_code == 409
    assert server.client.delete("/v1/slides/" + "0" * 32).status_code == 404
    assert server.client.delete("/v1/slides/..%2Fjobs.sqlite3").status_code == 404
    metrics = server.client.get("/metrics").text
    assert 'saganet_jobs{state="cancelled"}' in metrics


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A tiny JPEG whose header declares width x height (its frame header patched)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 160)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_a_small_upload_declaring_a_huge_image_is_refused_at_once(server):
    """Issue 13, item 2: a 632-byte JPEG declaring 13,000 x 13,000 px was decoded in the request
    handler (/healthz waited 6.5 s, 5 GB peak). Now only its header is read, off the event loop, and
    it is over the server's plain-image limit."""
    body = _jpeg_declaring(13000, 13000)
    assert len(body) < 1000
    t0 = time.monotonic()
    r = server.client.post("/v1/slides", files={"file": ("huge.jpg", body)}, data={"mpp": "0.5"})
    assert r.status_code == 422 and "13000x13000 is over the 64,000,000-pixel limit" in r.json()["error"], r.text
    assert time.monotonic() - t0 < 2 and server.client.get("/healthz").status_code == 200


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_slow_headers_and_stalled_bodies_are_cut_off(tmp_path, parser):
    """Issue 13, item 8: slow-header and slow-body connections were still open after 100 s. Both HTTP
    parsers the server can use get the same deadline."""
    import socket

    s = Server(DEMO_BUNDLE, tmp_path / "state", "--backend", "onnxruntime", "--body-idle-s", "1", "--header-timeout-s", "2",
               "--http", parser)
    try:
        # Headers a byte every 0.3 s (slowloris), and a connection that sends nothing: both closed at 2 s.
        for trickle in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, b""):
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
                t0, closed = time.monotonic(), False
                for byte in trickle or [None] * 40:
                    try:
                        if byte is not None:
                            sock.sendall(bytes([byte]))
                        sock.settimeout(0.3)
                        closed = sock.recv(1) == b""
                    except (TimeoutError, socket.timeout):
                        continue
                    except (BrokenPipeError, ConnectionResetError):
                        closed = True
                    if closed:
                        break
                assert closed and 1.5 < time.monotonic() - t0 < 6, (trickle[:20], time.monotonic() - t0)
        assert s.client.get("/healthz").status_code == 200  # an ordinary request is not affected
        for head in (b"POST /v1/slides HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
                     b"POST /v1/classify?shape=1,224,224,3 HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/octet-stream\r\nContent-Length: 150528\r\n\r\n",
                     b"POST /v1/slides HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
                t0 = time.monotonic()
                start = b"{\"pa"  # a valid start of a body, then nothing
                if b"chunked" in head:  # a chunk's size first, and a multipart part (httptools passes data on at once)
                    part = b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.tif"\r\n\r\nII*'
                    start = b"%x\r\n" % (len(part) + 100) + part
                sock.sendall(head + start)
                answer = b""
                while chunk := sock.recv(4096):  # until the server closes the connection
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer, answer[:200]
                assert time.monotonic() - t0 < 8
        assert s.alive()
    finally:
        assert s.stop(), s.log()


def test_upload_folders_of_no_job_are_removed_at_start(tmp_path):
    """Issue 13, item 11: a `kill -9` during an upload left an empty upload folder for good."""
    from saganet.serve.jobs import JobStore

    store = JobStore(tmp_path / "state")
    kept = store.uploads / ("a" * 32)
    kept.mkdir()
    (kept / "slide.svs").write_bytes(b"x")
    store.add("a" * 32, kept / "slide.svs", "slide.svs", True)
    (store.uploads / ("b" * 32)).mkdir()  # cut short before its job was written
    (store.uploads / "stray.tmp").write_bytes(b"")
    again = JobStore(tmp_path / "state")
    assert again.removed_uploads == 2 and [p.name for p in again.uploads.iterdir()] == ["a" * 32]


def test_the_server_keeps_its_temporary_files_in_the_state_dir(tmp_path, fresh_bundle):
    """Issue 13, item 11: every start with the aoti backend left a 6.5 MB aotinductor_* folder in /tmp."""
    import glob
    import tempfile

    before = set(glob.glob(f"{tempfile.gettempdir()}/aotinductor_*"))
    (tmp_path / "state" / "tmp").mkdir(parents=True)
    (tmp_path / "state" / "tmp" / "left-by-a-kill").write_bytes(b"x")
    s = Server(fresh_bundle.path, tmp_path / "state", "--backend", "aoti")
    try:
        inside = list((tmp_path / "state" / "tmp").iterdir())
        assert inside and "left-by-a-kill" not in [p.name for p in inside]  # emptied at start, then used
        assert set(glob.glob(f"{tempfile.gettempdir()}/aotinductor_*")) == before
    finally:
        assert s.stop(), s.log()
    assert not (tmp_path / "state" / "tmp").exists()


def test_confine_refuses_links_out_of_the_root(tmp_path, data_dir):
    """Unit test of the path check against real links (the shared data folder is read-only)."""
    from saganet.serve.security import Refused, confine

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.svs").write_bytes(b"x")
    outside = tmp_path / "secret.svs"
    outside.write_bytes(b"x")
    (root / "escape.svs").symlink_to(outside)
    (root / "dir-escape").symlink_to(tmp_path)
    (root / "inside-link.svs").symlink_to(root / "sub" / "ok.svs")
    assert confine(root, "sub/ok.svs") == (root / "sub" / "ok.svs").resolve()
    assert confine(root, "inside-link.svs") == (root / "sub" / "ok.svs").resolve()
    for bad, status in (("escape.svs", 403), ("dir-escape/secret.svs", 403), ("sub/../../secret.svs", 422),
                        (str(outside), 422), ("sub", 404), ("missing.svs", 404)):
        with pytest.raises(Refused) as e:
            confine(root, bad)
        assert e.value.status == status, bad
    with pytest.raises(Refused) as e:
        confine(None, "sub/ok.svs")
    assert e.value.status == 403 and "--slide-root" in e.value.message
