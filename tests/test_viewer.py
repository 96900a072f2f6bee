"""The viewer's HTTP side on a real server and in-process: deep-zoom descriptor and tiles (pixels equal
OpenSlide's reads), refusals, the token, result layers, the tile under a point, and `saganet view`."""
import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from serve_helpers import Server
from shared_data import DEMO_BUNDLE

TOKEN = "viewer-token"
SLIDE = "cmu_small_region.svs"


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_dir):
    """A server with a token and a slide root holding the demo slide, whose job is done."""
    tmp = tmp_path_factory.mktemp("viewer")
    root = tmp / "root"
    root.mkdir()
    shutil.copy(data_dir / "wsi" / SLIDE, root / SLIDE)
    s = Server(DEMO_BUNDLE, tmp / "state", "--backend", "onnxruntime", "--slide-root", root, token=TOKEN)
    try:
        job = s.client.post("/v1/slides", json={"path": SLIDE}).json()["id"]
        assert s.wait_job(job)["state"] == "done"
        yield s, job, tmp / "state"
    finally:
        s.stop()


def _as_served(rgb: np.ndarray) -> bytes:
    """Pixels encoded as the server encodes deep-zoom tiles: equal bytes mean equal pixels."""
    from saganet.slide.deepzoom import JPEG_QUALITY

    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _jpeg(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG"
    return np.asarray(im.convert("RGB")).astype(np.float64)


def _region(path, x, y, level, w, h) -> np.ndarray:
    import openslide

    with openslide.OpenSlide(str(path)) as s:
        rgba = s.read_region((x, y), level, (w, h))
    white = Image.new("RGB", rgba.size, "white")
    white.paste(rgba, mask=rgba.split()[3])
    return np.asarray(white).astype(np.float64)


def test_dzi_and_full_resolution_tiles_equal_openslide(served, data_dir):
    s, job, _ = served
    dzi = s.client.get(f"/v1/slides/{job}/dzi")
    assert dzi.status_code == 200 and dzi.headers["content-type"].startswith("application/xml")
    assert 'Width="2220"' in dzi.text and 'Height="2967"' in dzi.text and 'TileSize="254"' in dzi.text
    top = 12  # ceil(log2(2967)) = 12: the full-resolution level
    for col, row in [(0, 0), (3, 5), (8, 11)]:
        r = s.client.get(f"/v1/slides/{job}/dzi_files/{top}/{col}_{row}.jpeg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        tile = _jpeg(r.content)
        # 254 px tiles with 1 px of overlap: each starts 1 px before its cell, except on the first row/column.
        x0, y0 = max(0, col * 254 - 1), max(0, row * 254 - 1)
        w, h = tile.shape[1], tile.shape[0]
        ref = _region(data_dir / "wsi" / SLIDE, x0, y0, 0, w, h)
        assert r.content == _as_served(ref), (col, row)
    twice = [s.client.get(f"/v1/slides/{job}/dzi_files/{top}/8_11.jpeg").content for _ in range(2)]
    assert twice[0] == twice[1] == r.content  # the cache gives what a read gave


def test_levels_of_a_two_level_slide_equal_openslide_reads(tmp_path, data_dir):
    """In-process through `saganet view`'s app, on a slide whose second level is a 2.0005x reduction:
    full-resolution tiles are level-0 reads; the 2x deep-zoom level is the slide's second level (read
    whole when the slide opens: within 0.1 % of 2x), and 4x is that level box-reduced 2x."""
    from fastapi.testclient import TestClient

    from saganet.serve.viewer import create_viewer_app

    slide = data_dir / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
    (tmp_path / "tcga").mkdir()
    (tmp_path / "tcga" / "report.json").write_text(json.dumps({"slide": str(slide)}))
    with TestClient(create_viewer_app(tmp_path)) as client:
        assert 'Width="4443"' in client.get("/v1/slides/tcga/dzi").text
        top = 13  # 4443 px: levels 0..13
        level1 = _region(slide, 0, 0, 1, 2221, 1783)  # the whole second level: its own pixel grid
        for level, col, row in [(top, 4, 7), (top - 1, 2, 3), (top - 1, 5, 1), (top - 2, 1, 2)]:
            served = client.get(f"/v1/slides/tcga/dzi_files/{level}/{col}_{row}.jpeg").content
            tile = _jpeg(served)
            scale = 2 ** (top - level)
            if scale == 1:
                ref = _region(slide, col * 254 - 1, row * 254 - 1, 0, tile.shape[1], tile.shape[0])
            else:  # level-1 pixels from (level-0 position / 2.0005), rounded
                x, y = (round(scale * (v * 254 - 1) / 2.0005055500659967) for v in (col, row))
                ref = level1[y:y + tile.shape[0] * scale // 2, x:x + tile.shape[1] * scale // 2]
                ref = np.asarray(Image.fromarray(ref.astype(np.uint8)).reduce(scale // 2)) if scale > 2 else ref
            assert served == _as_served(ref), (level, col, row)
        # The last column and row at 2x: 4443 - 4062 = 381 level-0 px make 191 (2222 - 2031) deep-zoom px,
        # not a whole 2x; resampled, close to the box reduction of the 382 px with white beyond the edge.
        edge = _jpeg(client.get(f"/v1/slides/tcga/dzi_files/{top - 1}/8_7.jpeg").content)
        assert edge.shape == (1784 - (7 * 254 - 1), 2222 - (8 * 254 - 1), 3)
        ref = np.asarray(Image.fromarray(_region(slide, 2 * (8 * 254 - 1), 2 * (7 * 254 - 1), 0, 382, 14).astype(np.uint8)).reduce(2))
        assert np.abs(edge - ref).mean() < 6
        r = client.get(f"/v1/slides/tcga/dzi_files/{top + 1}/0_0.jpeg")
        assert r.status_code == 404 and "level 14 does not exist" in r.json()["error"]


def test_tile_requests_that_are_refused(served):
    s, job, _ = served
    base = f"/v1/slides/{job}/dzi_files"
    cases = {
        f"{base}/13/0_0.jpeg": 404,  # level out of range
        f"{base}/12/9_0.jpeg": 404,  # column out of range (9 columns at the full level: 0..8)
        f"{base}/12/0_12.jpeg": 404,  # row out of range
        f"{base}/0/1_0.jpeg": 404,
        f"{base}/x/0_0.jpeg": 422,
        f"{base}/12/a_b.jpeg": 422,
        f"{base}/12/0_0.png": 422,
        f"{base}/-1/0_0.jpeg": 422,
        f"{base}/12/-1_0.jpeg": 422,
        f"{base}/99999999999/0_0.jpeg": 422,
        f"{base}/12/0_0.jpeg%00": 422,
        "/v1/slides/..%2F..%2Fetc%2Fpasswd/dzi": 404,
        "/v1/slides/%2E%2E/dzi": 404,
        "/v1/slides/" + "a" * 5000 + "/dzi": 404,
        "/v1/slides/" + "0" * 32 + "/dzi": 404,
        f"/v1/slides/{job.upper()}/dzi": 404,
        f"/v1/slides/{job}/layers/nope.png": 404,
        f"/v1/slides/{job}/layers/prob/NOPE.png": 404,
        f"/v1/slides/{job}/tile-at?x=abc&y=1": 422,
        f"/v1/slides/{job}/tile-at?x=-1&y=1": 422,
        f"/v1/slides/{job}/tile-at?x=1&y=99999": 422,
        f"/v1/slides/{job}/tile-at?x=nan&y=1": 422,
        f"/v1/slides/{job}/tile-at?x=1": 422,
    }
    for url, status in cases.items():
        r = s.client.get(url)
        assert r.status_code == status, (url, r.status_code, r.text[:200])
    assert s.alive()


def test_token_guards_everything_but_the_page(served):
    import httpx

    s, job, _ = served
    anon = httpx.Client(base_url=s.url)
    for url in ["/v1/slides", "/v1/slide-root", f"/v1/slides/{job}/layout", f"/v1/slides/{job}/dzi",
                f"/v1/slides/{job}/dzi_files/12/0_0.jpeg", f"/v1/slides/{job}/layers/class.png",
                f"/v1/slides/{job}/layers/prob/TUM.png", f"/v1/slides/{job}/tile-at?x=10&y=10",
                f"/v1/slides/{job}/geojson", f"/v1/slides/{job}/tiles.csv", f"/v1/slides/{job}/heatmap/TUM"]:
        assert anon.get(url).status_code == 401, url
        assert anon.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401, url
        assert s.client.get(url).status_code == 200, url
    for url in ["/", "/static/viewer.js", "/static/viewer.css", "/vendor/openseadragon/openseadragon.min.js"]:
        r = anon.get(url)
        assert r.status_code == 200 and job not in r.text, url
    assert anon.get("/static/..%2Fviewer.py").status_code == 404  # nothing but the page files is public
    assert anon.get("/static/../v1/slides").status_code == 401


def test_slide_lists(served):
    s, job, _ = served
    slides = s.client.get("/v1/slides").json()
    assert slides["writable"] is True and slides["slides"][0]["id"] == job and slides["slides"][0]["state"] == "done"
    assert s.client.get("/v1/slide-root").json() == {"slides": [SLIDE]}


def test_a_slide_swapped_for_a_link_outside_the_root_is_refused(served, data_dir, tmp_path):
    s, _, state = served
    root = state.parent / "root"
    shutil.copy(data_dir / "wsi" / SLIDE, root / "swap.svs")
    job = s.client.post("/v1/slides", json={"path": "swap.svs"}).json()["id"]
    assert s.wait_job(job)["state"] == "done"
    outside = tmp_path / "outside.svs"
    shutil.copy(data_dir / "wsi" / SLIDE, outside)
    (root / "swap.svs").unlink()
    (root / "swap.svs").symlink_to(outside)
    for url in (f"/v1/slides/{job}/dzi", f"/v1/slides/{job}/layout", f"/v1/slides/{job}/dzi_files/12/1_1.jpeg"):
        r = s.client.get(url)
        assert r.status_code == 403 and "outside the slide root" in r.json()["error"], url
    (root / "swap.svs").unlink()
    assert s.client.get(f"/v1/slides/{job}/dzi").status_code == 404  # gone: named, not a 500
    assert "swap.svs" not in s.client.get("/v1/slide-root").json()["slides"]


def test_plain_images_are_pyramids_with_transparency_made_white(tmp_path):
    """A PNG through `saganet view`: deep-zoom tiles are its pixels, transparent ones white (the
    pipeline's and training's rule)."""
    from fastapi.testclient import TestClient

    from saganet.serve.viewer import create_viewer_app

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (600, 700, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:100, :100, 3] = 0  # a transparent corner
    Image.fromarray(rgba, "RGBA").save(tmp_path / "image.png")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "report.json").write_text(json.dumps({"slide": str(tmp_path / "image.png")}))
    with TestClient(create_viewer_app(tmp_path)) as client:
        assert 'Width="700"' in client.get("/v1/slides/img/dzi").text
        served = client.get("/v1/slides/img/dzi_files/10/0_0.jpeg").content  # 700 px: level 10 is full size
        ref = rgba[:255, :255, :3].copy()
        ref[:100, :100] = 255
        assert served == _as_served(ref)
        (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        (tmp_path / "img2").mkdir()
        (tmp_path / "img2" / "report.json").write_text(json.dumps({"slide": str(tmp_path / "image.png")}))
        r = client.get("/v1/slides/img2/dzi")
        assert r.status_code == 422 and "image.png" in r.json()["error"]


def _table(out_dir):
    with open(out_dir / "tiles.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_layers_and_tile_at_equal_the_tile_table(served):
    s, job, state = served
    rows = _table(state / "jobs" / job)
    layout = s.client.get(f"/v1/slides/{job}/layout").json()
    classes, grid = layout["classes"], layout["grid"]
    assert layout["state"] == "done" and layout["mpp"] == 0.499 and layout["model"].startswith("demo-crc7")
    assert layout["tiles"] == len(rows) and grid["cols"] == 2220 // 224 and grid["rows"] == 2967 // 224
    k = grid["cell_px"]
    class_map = np.asarray(Image.open(io.BytesIO(s.client.get(layout["layers"]["class"]).content)))
    tum = np.asarray(Image.open(io.BytesIO(s.client.get(layout["layers"]["prob"]["TUM"]).content)))
    assert class_map.shape == (grid["rows"] * k, grid["cols"] * k, 4) == tum.shape
    colours = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in layout["colours"]]
    tiled = np.zeros((grid["rows"], grid["cols"]), bool)
    for row in rows:
        col, r = round(int(row["x"]) / grid["size0"]), round(int(row["y"]) / grid["size0"])
        tiled[r, col] = True
        pixel = class_map[r * k + k // 2, col * k + k // 2]
        assert tuple(pixel[:3]) == colours[classes.index(row["predicted"])] and pixel[3] == 255
        # tile-at anywhere inside the tile gives this row, exactly as written
        x, y = int(row["x"]) + 5, int(row["y"]) + int(row["size"]) - 5
        tile = s.client.get(f"/v1/slides/{job}/tile-at", params={"x": x, "y": y}).json()["tile"]
        assert (tile["x"], tile["y"], tile["predicted"]) == (int(row["x"]), int(row["y"]), row["predicted"])
        assert tile["valid_fraction"] == float(row["valid_fraction"])
        assert {c: f"{p:.6f}" for c, p in tile["probs"].items()} == {c: row[f"prob_{c}"] for c in classes}
    assert (class_map[k // 2::k, k // 2::k, 3] == 255 * tiled).all()  # transparent where no tile
    assert (tum[k // 2::k, k // 2::k, 3] == 255 * tiled).all()
    glass = np.argwhere(~tiled)[0]
    at = s.client.get(f"/v1/slides/{job}/tile-at", params={"x": glass[1] * 224 + 100, "y": glass[0] * 224 + 100})
    assert at.status_code == 200 and at.json() == {"tile": None}


def test_downloads_and_heatmap_legend(served):
    s, job, _ = served
    layout = s.client.get(f"/v1/slides/{job}/layout").json()
    for name, url in layout["downloads"].items():
        r = s.client.get(url)
        assert r.status_code == 200 and len(r.content) > 100, name
    hm = Image.open(io.BytesIO(s.client.get(layout["downloads"]["heatmap TUM"]).content))
    thumb_height = hm.height - 52
    band = np.asarray(hm.convert("RGB"))[thumb_height:]
    assert (band == 255).mean() > 0.7 and (band < 60).any()  # a white band with text and a colour bar


def test_view_serves_predict_results_read_only(served):
    """`saganet view` over a folder of results (here the server's job folders, which have the same layout)."""
    from fastapi.testclient import TestClient

    from saganet.serve.viewer import create_viewer_app

    s, job, state = served
    with TestClient(create_viewer_app(state / "jobs", token="t")) as client:
        auth = {"Authorization": "Bearer t"}
        assert client.get("/v1/slides").status_code == 401
        listed = client.get("/v1/slides", headers=auth).json()
        assert listed["writable"] is False and job in [e["id"] for e in listed["slides"]]
        assert all(e["state"] == "done" for e in listed["slides"])
        assert client.get("/v1/slide-root", headers=auth).json() == {"slides": []}
        assert client.post("/v1/slides", headers=auth, json={"path": SLIDE}).status_code == 405
        served_layout = s.client.get(f"/v1/slides/{job}/layout").json()
        layout = client.get(f"/v1/slides/{job}/layout", headers=auth).json()
        assert {k: v for k, v in layout.items() if k != "name"} == {k: v for k, v in served_layout.items() if k != "name"}
        assert client.get(f"/v1/slides/{job}/dzi_files/12/1_1.jpeg", headers=auth).content == \
            s.client.get(f"/v1/slides/{job}/dzi_files/12/1_1.jpeg").content
        assert client.get("/v1/slides/..%2F..%2Fetc/layout", headers=auth).status_code == 404
        assert client.get("/", headers=auth).status_code == 200


@pytest.fixture(scope="module")
def browser():
    from browser import chrome

    driver = chrome()
    yield driver
    driver.quit()


def _wait(driver, condition, what: str, timeout: float = 30):
    """Wait for `condition`; the page re-draws its lists while jobs run, so a stale element is retried."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]) \
        .until(condition, f"timed out waiting for {what}")


def _settled(driver, items: int):
    """Wait until every image is loaded and drawn, then for two equal canvas reads in a row."""
    import time

    from browser import CANVAS_JS, SETTLED_JS

    _wait(driver, lambda d: d.execute_script(SETTLED_JS, items), f"{items} images loaded and drawn")
    last = None
    for _ in range(50):
        now = driver.execute_script(CANVAS_JS, "stats")
        if last is not None and now == last:
            return now
        last = now
        time.sleep(0.15)
    return last


def test_viewer_in_a_real_browser(served, browser):
    """Chromium against the live server: the token asked once (a wrong one refused), the slide chosen
    from the list and drawn, the heatmap on changes the pixels and opacity 0 restores them, a click on a
    known tile shows that tile's row of the tile table, the scale bar, and no tile without the token."""
    from browser import CANVAS_JS, shot
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    s, job, state = served
    d = browser
    d.get(s.url + "/")
    dialog = d.find_element(By.ID, "token-dialog")
    _wait(d, lambda _: dialog.get_attribute("open") is not None, "the token question")
    shot(d, "01-token")
    d.find_element(By.ID, "token-input").send_keys("wrong-token", Keys.ENTER)
    _wait(d, lambda _: dialog.get_attribute("open") is not None and "refused" in dialog.text, "a refused token")
    token_input = d.find_element(By.ID, "token-input")
    token_input.clear()
    token_input.send_keys(TOKEN, Keys.ENTER)
    item = _wait(d, lambda _: d.find_elements(By.CSS_SELECTOR, f"#slide-list li[data-id='{job}']"), "the slide list")[0]
    assert SLIDE in item.text and "done" in item.text
    assert d.find_element(By.ID, "root-list").text == SLIDE

    item.click()
    _wait(d, lambda _: d.find_element(By.ID, "slide-name").text == SLIDE, "the side panel")
    before = _settled(d, 4)  # the slide and its three layers (hidden: opacity 0)
    assert before["drawn"] > 0.2, before  # tiles are drawn: the canvas is not blank
    shot(d, "02-slide")
    assert "MUS" in d.find_element(By.ID, "info-call").text and "demo-crc7" in d.find_element(By.ID, "info-model").text
    assert d.find_element(By.ID, "scale-text").text.endswith(("µm", "mm"))
    d.execute_script(CANVAS_JS, "snapshot")

    d.find_element(By.ID, "prob-on").click()
    heat = _settled(d, 4)
    assert heat["diff"] > 5, heat  # the heatmap changes the pixels
    shot(d, "03-heatmap")
    d.find_element(By.ID, "prob-opacity").send_keys(Keys.HOME)  # the slider to 0
    assert d.find_element(By.ID, "prob-opacity").get_attribute("value") == "0"
    faded = _settled(d, 4)
    assert faded["diff"] < 0.01, faded  # opacity 0 restores the slide's pixels
    d.find_element(By.ID, "class-on").click()
    shot(d, "04-class-map")
    d.find_element(By.ID, "class-on").click()

    rows = _table(state / "jobs" / job)
    row = max(rows, key=lambda r: float(r["prob_TUM"]))  # a known tile: the most tumour-like
    size = int(row["size"])
    cx, cy = d.execute_script(
        "const p = window.saganet.viewer.world.getItemAt(0).imageToViewerElementCoordinates("
        "new OpenSeadragon.Point(arguments[0], arguments[1])); return [p.x, p.y];",
        int(row["x"]) + size / 2, int(row["y"]) + size / 2)
    view = d.find_element(By.ID, "view")
    ActionChains(d).move_to_element_with_offset(view, cx - view.size["width"] / 2, cy - view.size["height"] / 2) \
        .click().perform()
    _wait(d, lambda _: f"({row['x']}, {row['y']})" in d.find_element(By.ID, "tile-where").text, "the tile panel")
    assert d.find_element(By.ID, "tile-class").text == row["predicted"]
    assert d.find_element(By.ID, "tile-valid").text == f"{float(row['valid_fraction']):.4f}"
    shown = {tr.get_attribute("data-cls"): tr.find_elements(By.TAG_NAME, "td")[1].text
             for tr in d.find_elements(By.CSS_SELECTOR, "#tile-probs tr")}
    assert shown == {c: row[f"prob_{c}"] for c in json.loads(s.client.get(f"/v1/slides/{job}/layout").text)["classes"]}
    assert d.find_elements(By.CSS_SELECTOR, ".tile-box")
    shot(d, "05-tile")

    status = d.execute_script(
        "return Promise.all([fetch(arguments[0]).then(r => r.status),"
        " fetch(arguments[0], {headers: {Authorization: 'Bearer ' + window.saganet.token}}).then(r => r.status)]);",
        f"/v1/slides/{job}/dzi_files/12/0_0.jpeg")
    assert status == [401, 200]
    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert not errors, errors

    # Submitting from the page: a slide of the slide root becomes a new job, shown while it runs and
    # opened with its layers once done.
    def new_current(known):
        def check(_):
            current = d.find_elements(By.CSS_SELECTOR, "#slide-list li.current")
            name = current[0].get_attribute("data-id") if current else None
            return name if name and name not in known else False
        return check

    known = {li.get_attribute("data-id") for li in d.find_elements(By.CSS_SELECTOR, "#slide-list li")}
    d.find_element(By.CSS_SELECTOR, "#root-list li").click()
    new = _wait(d, new_current(known), "the new job, current in the list")
    shown = "const l = window.saganet.layout; return l && l.id === arguments[0] ? l.state : null;"
    _wait(d, lambda _: d.execute_script(shown, new) == "done", "the new job done, in the panel", timeout=180)
    _wait(d, lambda _: d.find_element(By.ID, "info-state").text == "done", "the panel saying done")
    _wait(d, lambda _: not d.find_element(By.ID, "layers").get_attribute("hidden"), "the new job's layers")
    assert s.client.get(f"/v1/slides/{new}").json()["state"] == "done"
    shot(d, "06-submitted")

    # An upload from the page.
    known.add(new)
    d.find_element(By.ID, "upload-file").send_keys(str(state.parent / "root" / SLIDE))
    d.find_element(By.CSS_SELECTOR, "#upload-form button").click()
    uploaded = _wait(d, new_current(known), "the uploaded job, current in the list")
    _wait(d, lambda _: d.execute_script(shown, uploaded) == "done", "the upload done, in the panel", timeout=180)
    shot(d, "07-uploaded")
