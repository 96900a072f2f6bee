import numpy as np
import pytest
from PIL import Image

from saganet.data import DatasetError, ImageLoadError, load_dataset, load_image, load_images, load_mask_png, read_manifest


def _save(path, arr, mode=None, **kw):
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(path, **kw)
    return path


def test_modes_converted(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    assert load_image(_save(tmp_path / "a.png", rgb)).shape == (10, 12, 3)
    grey = load_image(_save(tmp_path / "g.png", rgb, "L"))
    assert grey.shape == (10, 12, 3) and np.array_equal(grey[..., 0], grey[..., 1])
    assert load_image(_save(tmp_path / "p.png", rgb, "P")).shape == (10, 12, 3)
    rgba = np.dstack([rgb, np.zeros((10, 12), np.uint8)])  # fully transparent -> white background
    out = load_image(_save(tmp_path / "t.png", rgba))
    assert out.shape == (10, 12, 3) and out.min() == 255
    sixteen = (np.arange(120, dtype=np.uint16).reshape(10, 12) * 500)
    Image.fromarray(sixteen).save(tmp_path / "s.png")
    out = load_image(tmp_path / "s.png")
    assert out.dtype == np.uint8 and out.shape == (10, 12, 3) and out.max() > 200


def test_corrupt_truncated_and_missing_named(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageLoadError, match="junk.png"):
        load_image(tmp_path / "junk.png")
    rgb = np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    _save(tmp_path / "full.jpg", rgb)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_refused(tmp_path):
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="big.png.*exceeds"):
        load_image(tmp_path / "big.png", max_pixels=1_000_000)


def test_skip_bad_reports(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        _save(tmp_path / cls / "ok.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "b" / "bad.png").write_bytes(b"\x89PNG broken")
    samples, classes = load_dataset(tmp_path)
    assert classes == ["a", "b"] and len(samples) == 3
    with pytest.raises(ImageLoadError, match="bad.png"):
        load_images(samples)
    msgs = []
    imgs, kept, bad = load_images(samples, skip_bad=True, log=msgs.append)
    assert len(imgs) == 2 and len(bad) == 1 and "bad.png" in bad[0] and msgs


def test_manifest_errors(tmp_path):
    (tmp_path / "m.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(DatasetError, match="header"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("path,label\nx.png,\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_bytes(b"path,label\n\xff\xfe.png,a\n")
    with pytest.raises(DatasetError, match="UTF-8"):
        read_manifest(tmp_path / "m.csv")
    with pytest.raises(DatasetError, match="no such"):
        load_dataset(tmp_path / "missing")


def test_real_manifest_has_patients(data_dir):
    samples, classes = load_dataset(data_dir / "osteosarcoma_ut_test60")
    assert classes == ["Non-Tumor", "Non-Viable-Tumor", "Viable"]
    assert len(samples) == 60 and all(s.patient for s in samples)


def test_user_mask_size_checked(tmp_path):
    Image.fromarray(np.full((4, 5), 255, np.uint8)).save(tmp_path / "m.png")
    assert load_mask_png(tmp_path / "m.png", (4, 5)).all()
    with pytest.raises(ImageLoadError, match="m.png.*5x4"):
        load_mask_png(tmp_path / "m.png", (8, 8))


def test_an_empty_class_folder_is_named_not_dropped(tmp_path):
    """Issue 13, item 10: an empty class folder was dropped without a word (the model lacked the class)."""
    from PIL import Image

    from saganet.data import DatasetError, load_dataset

    for cls in ("A", "B"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / cls / "x.png")
    (tmp_path / "C").mkdir()
    (tmp_path / "C" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="class folder.s. C hold no images"):
        load_dataset(tmp_path)


def test_transparency_is_white_in_training_and_slide_reading(tmp_path):
    """Issue 13, item 7: one rule on every path; here training's loader and the pipeline's plain-image
    reader (the server's tile decoding is tested in test_serve.py)."""
    import numpy as np
    from PIL import Image

    from saganet.data import load_image
    from saganet.slide.reader import open_reader

    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 30
    rgba[..., 3] = 255
    rgba[:, :32, 3] = 0  # left half transparent (its colour channels say black)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    trained = load_image(tmp_path / "t.png")
    with open_reader(tmp_path / "t.png") as reader:
        read = reader.read(0, 0, 64, 64)
    assert (trained[:, :32] == 255).all() and (trained[:, 32:] == 30).all()
    np.testing.assert_array_equal(read, trained)


def test_patient_splits_stay_fast_with_many_patients():
    """40 patients have 2^40 partitions: they are sampled, not listed, and each keeps every class on both sides."""
    import time

    import numpy as np

    from saganet.study import patient_splits

    rng = np.random.default_rng(0)
    patients = [f"p{i}" for i in range(40) for _ in range(5)]
    labels = np.array([i % 3 for i in range(200)])
    rng.shuffle(labels)
    t0 = time.perf_counter()
    splits = patient_splits(labels, patients)
    assert time.perf_counter() - t0 < 10 and len(splits) > 100
    for train, test in splits[:50]:
        assert not train & test and train | test == set(patients)
        for side in (train, test):
            assert {int(l) for l, p in zip(labels, patients) if p in side} == {0, 1, 2}


def test_patient_splits_of_few_patients_are_all_listed():
    import numpy as np

    from saganet.study import patient_splits

    labels, patients = np.array([0, 1, 0, 1, 0, 1]), ["a", "a", "b", "b", "c", "c"]
    assert sorted(sorted(te) for _, te in patient_splits(labels, patients)) == [["a"], ["a", "b"], ["a", "c"], ["b"], ["b", "c"], ["c"]]
