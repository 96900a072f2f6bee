"""The hostile-input suite (issue 13): a live server on loopback attacked with named requests (each a
known attack or a regression) and with a seeded, bounded random attack over every route, parameter
and body format. Every answer must be below 500, the server healthy after, and its log free of
tracebacks. The CLI, C API, bundle and slide-root cases live beside the code they test
(test_cli.py, test_native_engine.py, test_bundle.py, test_serve.py); `COUNTS` is written to
runs/test-artifacts/hostile/counts.json for the record."""
import io
import json
import os
import random
import string
import urllib.parse
from collections import Counter

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_helpers import REPO, Server
from shared_data import DEMO_BUNDLE, crc_tiles

SLIDE = "cmu_small_region.svs"
TOKEN = "s3cret-token"
COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir):
    s = Server(DEMO_BUNDLE, tmp_path_factory.mktemp("state"), "--slide-root", data_dir / "wsi", "--backend", "onnxruntime",
               token=TOKEN)
    job = s.client.post("/v1/slides", json={"path": SLIDE}).json()["id"]
    s.done_job = s.wait_job(job, states=("done",), timeout=300)["id"]
    yield s
    out = REPO / "runs" / "test-artifacts" / "hostile"
    out.mkdir(parents=True, exist_ok=True)
    (out / "counts.json").write_text(json.dumps(COUNTS, indent=1))
    assert "Traceback" not in s.log(), s.log()[-3000:]
    assert s.stop(), s.log()


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _hostile(data_dir):
    """(description, method, url, request kwargs): every one must get a 4xx."""
    jpeg = (data_dir / "crc_val_he_7k_test70" / "TUM").glob("*.jpg").__next__().read_bytes()
    small = _png(np.zeros((100, 100, 3), np.uint8))
    gif = io.BytesIO()
    Image.new("RGB", (224, 224)).save(gif, format="GIF")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # 400 Mpx, a few kB compressed
    j = {"headers": {"content-type": "application/json"}}
    traversal = ["../wsi/" + SLIDE, "../../etc/passwd", "/etc/passwd", "..", ".", "./" + SLIDE, "a/../../" + SLIDE,
                 "..\\..\\windows\\win.ini", "C:\\windows\\win.ini", "%2e%2e/%2e%2e/etc/passwd", SLIDE + "\x00.png",
                 "link-out/passwd", "//etc/passwd", "~/.ssh/id_rsa", "nonexistent.svs", ""]
    cases = [(f"traversal {p!r}", "POST", "/v1/slides", {"json": {"path": p}}) for p in traversal]
    cases += [
        ("path not a string", "POST", "/v1/slides", {"json": {"path": 42}}),
        ("path missing", "POST", "/v1/slides", {"json": {}}),
        ("json array", "POST", "/v1/slides", {"json": [SLIDE]}),
        ("broken json", "POST", "/v1/slides", {"content": b'{"path": ', **j}),
        ("non-UTF-8 json", "POST", "/v1/slides", {"content": b'{"path": "\xff\xfe"}', **j}),
        ("mpp not a number", "POST", "/v1/slides", {"json": {"path": SLIDE, "mpp": "fast"}}),
        ("mpp negative", "POST", "/v1/slides", {"json": {"path": SLIDE, "mpp": -1}}),
        ("mpp boolean", "POST", "/v1/slides", {"json": {"path": SLIDE, "mpp": True}}),
        ("slide as text/plain", "POST", "/v1/slides", {"content": SLIDE, "headers": {"content-type": "text/plain"}}),
        ("upload not a slide", "POST", "/v1/slides", {"files": {"file": ("x.svs", b"II*\x00garbage")}}),
        ("upload of text", "POST", "/v1/slides", {"files": {"file": ("notes.txt", b"hello")}}),
        ("upload field missing", "POST", "/v1/slides", {"files": {"other": ("x.svs", b"abc")}}),
        ("upload as text field", "POST", "/v1/slides", {"data": {"file": "not a file"},
                                                          "files": {"dummy": ("d", b"")}}),
        ("upload name traversal, garbage", "POST", "/v1/slides", {"files": {"file": ("../../x.svs", b"junk")}}),
        ("malformed multipart", "POST", "/v1/slides",
         {"content": b"--zz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc", "headers":
          {"content-type": "multipart/form-data; boundary=zz"}}),
        ("multipart without boundary", "POST", "/v1/classify", {"content": b"abc", "headers":
                                                                 {"content-type": "multipart/form-data"}}),
        ("classify as json", "POST", "/v1/classify", {"json": {"tiles": []}}),
        ("classify no content type", "POST", "/v1/classify", {"content": b"abc"}),
        ("tiles field missing", "POST", "/v1/classify", {"files": {"image": ("a.jpg", jpeg)}}),
        ("tile as text field", "POST", "/v1/classify", {"data": {"tiles": "abc"}, "files": {"dummy": ("d", b"")}}),
        ("tile not an image", "POST", "/v1/classify", {"files": {"tiles": ("a.jpg", b"not an image")}}),
        ("tile truncated", "POST", "/v1/classify", {"files": {"tiles": ("a.jpg", jpeg[: len(jpeg) // 2])}}),
        ("tile wrong size", "POST", "/v1/classify", {"files": {"tiles": ("a.png", small)}}),
        ("tile GIF", "POST", "/v1/classify", {"files": {"tiles": ("a.gif", gif.getvalue())}}),
        ("tile decompression bomb", "POST", "/v1/classify", {"files": {"tiles": ("bomb.png", bomb.getvalue())}}),
        ("raw without shape", "POST", "/v1/classify", {"content": b"\x00" * 12, "headers":
                                                        {"content-type": "application/octet-stream"}}),
        ("raw shape garbage", "POST", "/v1/classify?shape=a,b,c", {"content": b"\x00", "headers":
                                                                    {"content-type": "application/octet-stream"}}),
        ("raw shape wrong size", "POST", "/v1/classify?shape=1,10,10,3", {"content": b"\x00" * 300, "headers":
                                                                           {"content-type": "application/octet-stream"}}),
        ("raw bytes short", "POST", "/v1/classify?shape=1,224,224,3", {"content": b"\x00" * 100, "headers":
                                                                        {"content-type": "application/octet-stream"}}),
        ("raw four channels", "POST", "/v1/classify?shape=1,224,224,4", {"content": b"\x00" * (224 * 224 * 4),
                                                                          "headers": {"content-type": "application/octet-stream"}}),
        ("raw zero tiles", "POST", "/v1/classify?shape=0,224,224,3", {"content": b"", "headers":
                                                                       {"content-type": "application/octet-stream"}}),
        ("raw too many tiles", "POST", "/v1/classify?shape=100000,224,224,3", {"content": b"\x00", "headers":
                                                                                {"content-type": "application/octet-stream"}}),
        ("unknown job", "GET", "/v1/slides/" + "0" * 32, {}),
        ("job id traversal", "GET", "/v1/slides/..%2F..%2Fjobs.sqlite3", {}),
        ("job id not hex", "GET", "/v1/slides/zzzz", {}),
        ("heatmap of unknown job", "GET", "/v1/slides/" + "0" * 32 + "/heatmap/TUM", {}),
        ("tiles.csv of unknown job", "GET", "/v1/slides/" + "1" * 32 + "/tiles.csv", {}),
        ("unknown route", "GET", "/v1/nothing", {}),
        ("wrong method", "DELETE", "/v1/classify", {}),
        # Issue 13, item 1: each of these was a 500, or accepted and failed later.
        ("json nested 30,000 deep", "POST", "/v1/slides", {"content": b"[" * 30000 + b"]" * 30000, **j}),
        ("object nested 10,000 deep", "POST", "/v1/slides", {"content": b'{"a":' * 10000 + b"1" + b"}" * 10000, **j}),
        ("mpp with 60,000 digits", "POST", "/v1/slides", {"content": b'{"path": "%s", "mpp": 1%s}' % (SLIDE.encode(), b"0" * 60000), **j}),
        ("mpp string of 60,000 digits", "POST", "/v1/slides", {"json": {"path": SLIDE, "mpp": "1" + "0" * 60000}}),
        ("mpp 1e-320", "POST", "/v1/slides", {"json": {"path": SLIDE, "mpp": 1e-320}}),
        ("mpp 0.01", "POST", "/v1/slides", {"json": {"path": SLIDE, "mpp": 0.01}}),
        ("mpp 1000", "POST", "/v1/slides", {"json": {"path": SLIDE, "mpp": 1000}}),
        ("mpp nan as text", "POST", "/v1/slides", {"json": {"path": SLIDE, "mpp": "nan"}}),
        ("mpp inf as text", "POST", "/v1/slides", {"json": {"path": SLIDE, "mpp": "inf"}}),
        ("mpp list", "POST", "/v1/slides", {"json": {"path": SLIDE, "mpp": [0.5]}}),
        ("upload with mpp 1e-320", "POST", "/v1/slides", {"files": {"file": ("a.png", small)}, "data": {"mpp": "1e-320"}}),
        ("upload with mpp of 60,000 digits", "POST", "/v1/slides",
         {"files": {"file": ("a.png", small)}, "data": {"mpp": "9" * 60000}}),
        ("path with a lone surrogate", "POST", "/v1/slides", {"content": b'{"path": "\\ud800.svs"}', **j}),
        ("path with a 300-character component", "POST", "/v1/slides", {"json": {"path": "a" * 300 + ".svs"}}),
        ("path of 5,000 characters", "POST", "/v1/slides", {"json": {"path": "a/" * 2500}}),
    ]
    return cases


def test_named_hostile_requests_get_4xx(server, data_dir):
    cases = _hostile(data_dir)
    COUNTS["named HTTP"] = len(cases) + 4
    assert len(cases) >= 50 and sum(c[0].startswith("traversal") for c in cases) >= 10
    bad = []
    for name, method, url, kwargs in cases:
        r = server.client.request(method, url, **kwargs)
        if not 400 <= r.status_code < 500:
            bad.append((name, r.status_code, r.text[:200]))
        elif r.headers.get("content-type", "").startswith("application/json"):
            assert "error" in r.json() or "detail" in r.json(), (name, r.text)
    assert not bad, bad
    # What an HTTP client library would not send: a lying Content-Length, garbage request lines.
    for raw in (b"POST /v1/classify?shape=1,224,224,3 HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: 99999999999\r\n\r\nabc",
                b"POST /v1/slides HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -5\r\n\r\n",
                b"GET /v1/slides/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not http at all\r\n\r\n"):
        status = _raw_status(server.port, raw)
        assert status is None or 400 <= status < 500, (raw[:40], status)
    assert server.alive() and server.client.get("/readyz").status_code == 200


def _raw_status(port, data: bytes):
    """Send bytes as they are; the status code of the answer, or None if the server just closed."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        try:
            head = sock.recv(64)
        except (ConnectionResetError, TimeoutError):
            return None
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None




# ---- the random attack: seeded, bounded, every route --------------------------------------------

def _junk_text(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 40)))
    if kind == 1:
        return "".join(chr(rng.choice([0x0, 0x7f, 0xff, 0x202e, 0xfeff, 0x1f600, 0x10ffff])) for _ in range(rng.randrange(1, 8)))
    if kind == 2:
        return rng.choice(["..", "../" * rng.randrange(1, 30), "%2e%2e%2f", "/dev/zero", "/proc/self/environ", "\\\\host\\share"])
    if kind == 3:
        return rng.choice(["nan", "inf", "-inf", "1e308", "-0", "0x10", "1_000", "9" * rng.randrange(20, 400)])
    if kind == 4:
        return "a" * rng.choice([255, 256, 1000, 5000])
    if kind == 5:
        return str(rng.randint(-2**70, 2**70))
    if kind == 6:
        return rng.choice(["TUM", "ADI", "tum", "TUM ", "TUM.png", "%00", "<script>", "${jndi:x}"])
    return ""


def _junk_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, -2**63 - 1, 10**400 if rng.random() < 0.2 else 7])
    if kind == 3:
        return rng.choice([0.5, 1e-320, 1e308, -0.0, 0.049, 100.01, 3.14])
    if kind in (4, 5):
        return _junk_text(rng)
    if kind == 6:
        return [_junk_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_junk_text(rng): _junk_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 12)):
        op = rng.randrange(4)
        i = rng.randrange(max(1, len(b)))
        if op == 0 and b:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[i:i + rng.randrange(1, 64)]
        elif op == 2:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        else:
            b = b[:i]
    return bytes(b)


def _slide_body(rng: random.Random):
    body = {"path": SLIDE, "mpp": 0.5}
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        if op == 0:
            body[rng.choice(["path", "mpp"])] = _junk_value(rng)
        elif op == 1:
            body.pop(rng.choice(["path", "mpp"]), None)
        elif op == 2:
            body[_junk_text(rng)] = _junk_value(rng)
        else:
            body["path"] = _junk_text(rng)
    raw = json.dumps(body, ensure_ascii=rng.random() < 0.5, allow_nan=True).encode("utf-8", "surrogatepass")
    return _mutate_bytes(rng, raw) if rng.random() < 0.3 else raw


def _attack(rng: random.Random, job_id: str, tile_png: bytes, tile_jpeg: bytes):
    """One random request: (family, method, url, kwargs)."""
    family = rng.choice(["slide body", "slide upload", "classify raw", "classify multipart", "viewer", "job", "auth"])
    ids = [job_id, "0" * 32, _junk_text(rng), job_id + "x", job_id[:-1]]
    sid = rng.choice(ids)
    j = {"headers": {"content-type": "application/json"}}
    octet = {"content-type": "application/octet-stream"}
    if family == "slide body":
        return family, "POST", "/v1/slides", {"content": _slide_body(rng), **j}
    if family == "slide upload":
        name = rng.choice(["a.png", "a.svs", "a.tif", "../../a.png", _junk_text(rng) or "x", "a" * 300 + ".png"])
        data = {"mpp": str(_junk_value(rng))} if rng.random() < 0.7 else {}
        payload = _mutate_bytes(rng, rng.choice([tile_png, tile_jpeg]))
        return family, "POST", "/v1/slides", {"files": {"file": (name, payload)}, "data": data}
    if family == "classify raw":
        shape = rng.choice(["1,224,224,3", "2,224,224,3", f"{rng.randint(-3, 5)},{rng.choice([224, 0, -224, 2**31])},224,3",
                            _junk_text(rng), "1,224,224", "1,224,224,3,1", ""])
        n = rng.choice([0, 1, 224 * 224 * 3, 224 * 224 * 3 - 1, 224 * 224 * 3 + 1, 2 * 224 * 224 * 3])
        return family, "POST", f"/v1/classify?shape={shape}", {"content": bytes(rng.randrange(256) for _ in range(min(n, 64))) * (n // 64 + 1)
                                                              if n else b"", "headers": octet}
    if family == "classify multipart":
        files = [(rng.choice(["tiles", "tile", _junk_text(rng) or "x"]), ("t.png", _mutate_bytes(rng, rng.choice([tile_png, tile_jpeg]))))
                 for _ in range(rng.randrange(1, 4))]
        return family, "POST", "/v1/classify", {"files": files}
    if family == "viewer":
        route = rng.randrange(6)
        if route == 0:
            level = rng.choice([str(rng.randint(-3, 30)), _junk_text(rng) or "0"])
            name = rng.choice([f"{rng.randint(-2, 99)}_{rng.randint(-2, 99)}.jpeg", f"0_0.{_junk_text(rng)}", _junk_text(rng) or "x"])
            return family, "GET", f"/v1/slides/{sid}/dzi_files/{level}/{name}", {}
        if route == 1:
            return family, "GET", f"/v1/slides/{sid}/layers/{rng.choice(['class', 'valid', _junk_text(rng) or 'x'])}.png", {}
        if route == 2:
            return family, "GET", f"/v1/slides/{sid}/layers/prob/{rng.choice(['TUM', _junk_text(rng) or 'x'])}.png", {}
        if route == 3:
            return family, "GET", f"/v1/slides/{sid}/tile-at", {"params": {"x": _junk_text(rng) or str(rng.uniform(-1e9, 1e9)),
                                                                          "y": str(rng.uniform(-10, 5000))}}
        if route == 4:
            return family, "GET", f"/v1/slides/{sid}/heatmap/{rng.choice(['TUM', 'ADI', _junk_text(rng) or 'x'])}", {}
        return family, "GET", f"/v1/slides/{sid}/{rng.choice(['dzi', 'layout', 'geojson', 'tiles.csv', _junk_text(rng) or 'x'])}", {}
    if family == "job":
        return family, rng.choice(["GET", "DELETE", "PUT", "PATCH"]), f"/v1/slides/{rng.choice(ids[1:])}", {}
    token = rng.choice([TOKEN + "x", TOKEN[:-1], TOKEN.upper(), " " + TOKEN, TOKEN + "\u00e9", "", "x" * 4000, _junk_text(rng)])
    scheme = rng.choice(["Bearer ", "bearer ", "Basic ", "", "Bearer  "])
    header = (scheme + token).encode("utf-8", "surrogatepass")
    return family, rng.choice(["GET", "POST"]), rng.choice(["/v1/model", "/metrics", "/v1/slides", "/readyz", "/docs"]), {
        "headers": {"Authorization": header}, "auth_override": True}


def test_random_attack_never_gets_a_5xx(server, data_dir):
    """A seeded random attack over every route (600 requests; HOSTILE_REQUESTS and HOSTILE_SEED for a
    longer or another one); none may get 500 or more."""
    count, rng = int(os.environ.get("HOSTILE_REQUESTS", 600)), random.Random(int(os.environ.get("HOSTILE_SEED", 13)))
    tile = crc_tiles(data_dir, 1)[0]
    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="JPEG")
    tile_png, tile_jpeg = _png(tile), buf.getvalue()
    anon = httpx.Client(base_url=server.url, timeout=30)
    statuses, bad = Counter(), []
    for i in range(count):
        family, method, url, kwargs = _attack(rng, server.done_job, tile_png, tile_jpeg)
        client = anon if kwargs.pop("auth_override", False) else server.client
        url = urllib.parse.quote(url, safe="/?=&,%")  # as a client must send it: control characters escaped
        try:
            r = client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            bad.append((i, family, url[:80], "timeout"))
            continue
        except httpx.LocalProtocolError:  # httpx will not send it (a NUL in a header): send the bytes as they are
            head = f"{method} {url} HTTP/1.1\r\nHost: x\r\n".encode() + b"".join(
                k.encode() + b": " + (v if isinstance(v, bytes) else v.encode()) + b"\r\n" for k, v in kwargs["headers"].items())
            status = _raw_status(server.port, head + b"Content-Length: 0\r\n\r\n")
            statuses[(family, f"raw {status}")] += 1
            if status is None or not 400 <= status < 500:
                bad.append((i, family, "raw", head[:120], status))
            continue
        statuses[(family, r.status_code)] += 1
        if r.status_code >= 500:
            bad.append((i, family, url[:80], r.status_code, r.text[:200]))
        if family == "auth" and r.status_code < 400:
            bad.append((i, family, "accepted a wrong token", kwargs["headers"]))
        if r.status_code == 202 and family.startswith("slide"):  # a mutation that is still a valid job: cancel it
            server.client.delete(f"/v1/slides/{r.json()['id']}")
    anon.close()
    COUNTS["random HTTP"] = sum(statuses.values())
    assert COUNTS["random HTTP"] == count
    COUNTS.update({f"random {f} {s}": n for (f, s), n in sorted(statuses.items(), key=str)})
    assert not bad, bad
    assert sum(n for (f, s), n in statuses.items() if isinstance(s, int) and 400 <= s < 500) > count // 2, statuses
    assert server.alive() and server.client.get("/readyz").status_code == 200

