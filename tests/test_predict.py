"""Whole-slide prediction on the real slides: outputs, MPP handling, bad slides, resumption."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from saganet.cli import main
from saganet.slide.pipeline import slide_call
from saganet.slide.tiler import tile_grid
from saganet.slide.writers import LEGEND_HEIGHT, LEGEND_MIN_WIDTH


@pytest.fixture(scope="module")
def cmu_run(tmp_path_factory, data_dir, demo_bundle):
    out = tmp_path_factory.mktemp("predict")
    rc = main(["predict", str(demo_bundle.path), str(data_dir / "wsi" / "cmu_small_region.svs"), "--out", str(out),
               "--backend", "onnxruntime"])
    assert rc == 0
    return out


def test_slide_outputs(cmu_run, demo_bundle):
    d = cmu_run / "cmu_small_region"
    report = json.loads((d / "report.json").read_text())
    classes = demo_bundle.class_names
    assert report["mpp"] == 0.499 and report["mpp_source"] == "slide"
    assert report["tile_size_level0"] == 224 and report["backend"] == "onnxruntime"
    n = report["tiles"]
    assert 30 <= n <= 117  # tissue tiles of a 9x13 grid
    call = report["call"]
    assert call["class"] in classes and 0 < call["tiles_used"] <= n
    assert abs(sum(call["probs"].values()) - 1) < 1e-4

    rows = list(csv.DictReader(open(d / "tiles.csv")))
    assert len(rows) == n
    assert list(rows[0])[:5] == ["x", "y", "level", "size", "valid_fraction"]
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    valid = np.array([float(r["valid_fraction"]) for r in rows])
    again = slide_call(probs, valid, classes, report["settings"]["min_valid"])
    assert again["class"] == call["class"] and again["tiles_used"] == call["tiles_used"]
    for r in rows:
        assert 0 <= int(r["x"]) <= 2220 - 224 and 0 <= int(r["y"]) <= 2967 - 224

    gj = json.loads((d / "tiles.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == n
    f = gj["features"][0]
    ring = f["geometry"]["coordinates"][0]
    assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
    assert f["properties"]["objectType"] == "tile" and f["properties"]["classification"]["name"] in classes
    assert set(f["properties"]["measurements"]) == {f"prob {c}" for c in classes} | {"valid fraction"}

    thumb = Image.open(d / "thumbnail.png")
    for c in classes:
        hm = Image.open(d / f"heatmap_{c}.png")  # the map (thumbnail-sized, top left) over its legend band
        assert hm.size == (max(thumb.width, LEGEND_MIN_WIDTH), thumb.height + LEGEND_HEIGHT) and hm.mode == "RGB"
    assert not list(d.glob("*.tmp"))
    summary = json.loads((cmu_run / "summary.json").read_text())
    assert summary["failed"] == [] and summary["slides"][0]["call"] == call


def test_heatmap_marks_the_predicted_tiles(cmu_run):
    """Tiles are coloured where they were predicted and the grey thumbnail shows elsewhere."""
    d = cmu_run / "cmu_small_region"
    grey = np.asarray(Image.open(d / "thumbnail.png").convert("L").convert("RGB")).astype(int)
    hm = np.asarray(Image.open(d / "heatmap_TUM.png")).astype(int)[:grey.shape[0], :grey.shape[1]]
    coloured = (np.abs(hm - grey).sum(-1) > 6).mean()
    report = json.loads((d / "report.json").read_text())
    covered = report["tiles"] * 224 * 224 / (2220 * 2967)
    assert abs(coloured - covered) < 0.03, (coloured, covered)


def test_rerun_reuses_finished_slides(cmu_run, data_dir, demo_bundle, capsys):
    before = (cmu_run / "cmu_small_region" / "report.json").stat().st_mtime_ns
    assert main(["predict", str(demo_bundle.path), str(data_dir / "wsi" / "cmu_small_region.svs"), "--out", str(cmu_run),
                 "--backend", "onnxruntime"]) == 0
    assert "already done" in capsys.readouterr().err
    assert (cmu_run / "cmu_small_region" / "report.json").stat().st_mtime_ns == before


def test_missing_mpp_bad_slides_and_the_rest_go_on(tmp_path, data_dir, demo_bundle, capsys):
    tcga = data_dir / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes((data_dir / "wsi" / "cmu_small_region.svs").read_bytes()[:300_000])
    corrupt = tmp_path / "corrupt.svs"  # valid TIFF structure, random bytes inside the JPEG tiles
    data = bytearray((data_dir / "wsi" / "cmu_small_region.svs").read_bytes())
    data[400_000:450_000] = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    corrupt.write_bytes(bytes(data))
    text = tmp_path / "notes.txt"
    text.write_text("not a slide")
    fake = tmp_path / "fake.svs"
    fake.write_bytes(b"II*\x00" + b"\x00" * 100)
    cmu = data_dir / "wsi" / "cmu_small_region.svs"
    rc = main(["predict", str(demo_bundle.path), str(tcga), str(truncated), str(corrupt), str(text), str(fake),
               str(cmu),
               "--out", str(tmp_path / "out"), "--backend", "onnxruntime"])
    err = capsys.readouterr().err
    assert rc == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    status = {r["slide"]: r for r in summary["slides"]}
    assert status[str(cmu)]["status"] == "done"
    assert "no microns-per-pixel value; pass it explicitly (--mpp)" in status[str(tcga)]["error"]
    assert str(truncated) in status[str(truncated)]["error"]
    assert f"{corrupt}: cannot read" in status[str(corrupt)]["error"] and "JPEG" in status[str(corrupt)]["error"]
    assert "unsupported format '.txt'" in status[str(text)]["error"]
    assert str(fake) in status[str(fake)]["error"]
    assert sorted(summary["failed"]) == sorted(map(str, [tcga, truncated, corrupt, text, fake]))
    assert "5 of 6 slide(s) failed" in err
    # A failed slide leaves no half-written table behind.
    assert [p.parent.name for p in (tmp_path / "out").glob("*/tiles.csv*")] == ["cmu_small_region"]


def test_explicit_mpp_reads_the_right_level(tmp_path, data_dir, demo_bundle):
    tcga = data_dir / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
    assert main(["predict", str(demo_bundle.path), str(tcga), "--mpp", "0.25", "--out", str(tmp_path),
                 "--backend", "onnxruntime"]) == 0
    report = json.loads((tmp_path / tcga.stem / "report.json").read_text())
    assert report["mpp_source"] == "--mpp" and report["tile_size_level0"] == 448  # 224 px at 0.5 um/px
    assert report["grid"] == [4443 // 448, 3567 // 448] and report["tiles"] > 0


def test_plain_image_needs_mpp(tmp_path, data_dir, demo_bundle):
    src = sorted((data_dir / "osteosarcoma_ut_test60").glob("*/*.jpg"))[0]
    png = tmp_path / "field.png"
    Image.open(src).convert("RGB").save(png)
    assert main(["predict", str(demo_bundle.path), str(png), "--out", str(tmp_path / "a"), "--backend", "torch"]) == 1
    assert main(["predict", str(demo_bundle.path), str(png), "--out", str(tmp_path / "b"), "--backend", "torch",
                 "--mpp", "0.5"]) == 0
    report = json.loads((tmp_path / "b" / "field" / "report.json").read_text())
    assert report["reader"] == "image" and report["grid"] == [1024 // 224, 1024 // 224]


def test_bad_arguments(tmp_path, demo_bundle, data_dir, capsys):
    cmu = str(data_dir / "wsi" / "cmu_small_region.svs")
    for extra, message in ((["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
                           (["--mpp", "-2"], "argument --mpp: must be in [0.05, 100], got -2"),
                           (["--mpp", "1e-320"], "argument --mpp: must be in [0.05, 100], got 1e-320"),
                           (["--max-tiles", "zero"], "argument --max-tiles: must be a whole number, got 'zero'")):
        with pytest.raises(SystemExit) as e:
            main(["predict", str(demo_bundle.path), cmu, "--out", str(tmp_path), *extra])
        assert e.value.code == 2 and message in capsys.readouterr().err, extra
    assert main(["predict", str(tmp_path / "nothing"), cmu, "--out", str(tmp_path)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_work_amplification_is_refused(tmp_path, data_dir, demo_bundle, capsys):
    """Issue 13, item 8: a 224 px image at 100 um/px was a 40,000-tile job; a slide needing more tiles
    than --max-tiles is refused, named, and the other slides go on."""
    png = tmp_path / "small.png"
    Image.fromarray(np.full((224, 224, 3), 120, np.uint8)).save(png)
    cmu = str(data_dir / "wsi" / "cmu_small_region.svs")
    assert main(["predict", str(demo_bundle.path), str(png), "--out", str(tmp_path / "a"), "--backend", "onnxruntime",
                 "--mpp", "100"]) == 1
    assert "over 4x coarser than the model" in capsys.readouterr().err
    assert main(["predict", str(demo_bundle.path), cmu, "--out", str(tmp_path / "b"), "--backend", "onnxruntime",
                 "--max-tiles", "10"]) == 1
    assert "54 tiles at 0.499 um/px is over the limit of 10" in capsys.readouterr().err


def test_tile_grid_follows_tissue_and_mpp():
    tissue = np.zeros((100, 200), bool)
    tissue[:, :100] = True  # left half is tissue
    g = tile_grid((2000, 1000), slide_mpp=0.25, model_mpp=0.5, tile=100, tissue=tissue)
    assert g.size0 == 200 and (g.cols, g.rows) == (10, 5)
    assert len(g.cells) == 25 and (g.cells[:, 0] < 5).all()
    assert g.origin(1) == (200, 0)


def test_slide_call_weights_by_valid_area():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 1.0]])
    call = slide_call(probs, np.array([0.9, 0.1, 0.01]), ["a", "b"], min_valid=0.05)
    assert call["tiles_used"] == 2 and call["class"] == "a"
    assert np.isclose(call["probs"]["a"], (0.9 * 0.9 + 0.2 * 0.1) / 1.0)
    assert slide_call(probs, np.zeros(3), ["a", "b"], 0.05)["class"] is None
    assert "no tissue" in slide_call(np.zeros((0, 2)), np.zeros(0), ["a", "b"], 0.05)["reason"]


def test_blank_image_gives_no_call_not_an_error(tmp_path, demo_bundle):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((600, 700, 3), 255, np.uint8)).save(blank)
    assert main(["predict", str(demo_bundle.path), str(blank), "--mpp", "0.5", "--out", str(tmp_path / "o"),
                 "--backend", "torch"]) == 0
    report = json.loads((tmp_path / "o" / "blank" / "report.json").read_text())
    assert report["tiles"] == 0 and report["call"]["class"] is None and "no tissue" in report["call"]["reason"]
