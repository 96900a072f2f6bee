"""Slide reading on the two real slides: tissue tiles, MPP, clear errors."""
import numpy as np
import pytest

from saganet.slide import SlideError, is_slide, open_reader, open_slide, thumbnail_tissue, tile_grid


def test_mpp_from_the_slide_when_it_records_it(data_dir):
    """The readers report the slide's own MPP, or None; slide prediction then needs --mpp
    (tests/test_predict.py), in the range MPP_RANGE (reader.mpp_problem)."""
    from saganet.config import mpp_problem

    with open_reader(data_dir / "wsi" / "cmu_small_region.svs") as r:
        assert r.mpp == pytest.approx(0.499)
    with open_reader(data_dir / "wsi" / "tcga-cr-7395-01a-01-ts1.svs") as r:
        assert r.mpp is None
    assert mpp_problem(0.25) is None and mpp_problem(0.0) and mpp_problem(1e-320) and mpp_problem(float("nan"))
    assert mpp_problem(True) and mpp_problem("0.5") and mpp_problem(101)


def test_the_tile_grid_keeps_tissue(data_dir):
    """The one tile grid (prediction and pretraining): tiles where the thumbnail shows tissue."""
    with open_reader(data_dir / "wsi" / "cmu_small_region.svs") as r:
        grid = tile_grid(r.dimensions, 1.0, 1.0, 256, thumbnail_tissue(r.thumbnail()), min_tissue=0.5)
        assert 0 < len(grid.cells) < (2220 // 256) * (2967 // 256)  # glass tiles are left out
        tiles = [r.read(*grid.origin(i), 256, 256) for i in range(5)]
        half = tile_grid(r.dimensions, 1.0, 2.0, 128, thumbnail_tissue(r.thumbnail()), min_tissue=0.5)
    assert half.size0 == 256 and {tuple(c) for c in half.cells} == {tuple(c) for c in grid.cells}
    assert all(t.shape == (256, 256, 3) and t.dtype == np.uint8 and t.mean() < 225 for t in tiles)


def test_bad_slides_name_the_file(tmp_path, data_dir):
    with pytest.raises(SlideError, match="nope.svs: no such slide"):
        open_slide(tmp_path / "nope.svs")
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"II*\x00" + bytes(64))
    with pytest.raises(SlideError, match="bad.svs"):
        open_slide(bad)
    png = next((data_dir / "lymphoma_iicbu" / "CLL").glob("*.png"))
    assert is_slide(data_dir / "wsi" / "cmu_small_region.svs") and not is_slide(png)


def test_plain_image_over_the_pixel_limit_is_refused_by_name(tmp_path):
    from PIL import Image

    from saganet.slide import open_reader

    bomb = tmp_path / "bomb.png"
    Image.new("1", (14000, 13000)).save(bomb)  # 182 Mpx, a few kB on disk
    with pytest.raises(SlideError, match=r"bomb\.png: over the .*-pixel limit for plain images"):
        open_reader(bomb)
