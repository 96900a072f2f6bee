import numpy as np
import pytest
from scipy import ndimage

from saganet import valid_area_mask
from saganet.data import load_image
from saganet.tissue import MaskConfig, mask_components


def _images(data_dir, rel, n=10):
    return [load_image(p) for p in sorted((data_dir / rel).iterdir())[:n]]


def test_cell_dense_tiles_mostly_valid(data_dir):
    for rel in ("lymphoma_iicbu/CLL", "lymphoma_iicbu/MCL", "crc_val_he_7k_test70/LYM"):
        fractions = [valid_area_mask(im).mean() for im in _images(data_dir, rel)]
        assert np.median(fractions) > 0.65, (rel, fractions)


def test_adipose_tiles_mostly_invalid(data_dir):
    fractions = [valid_area_mask(im).mean() for im in _images(data_dir, "crc_val_he_7k_test70/ADI")]
    assert np.median(fractions) < 0.25, fractions


def test_adipose_less_valid_than_lymphocytes_and_tumour(data_dir):
    frac = {rel: np.mean([valid_area_mask(im).mean() for im in _images(data_dir, f"crc_val_he_7k_test70/{rel}")])
            for rel in ("ADI", "LYM", "TUM", "STR")}
    assert frac["ADI"] < frac["STR"] < frac["LYM"], frac
    assert frac["ADI"] < frac["TUM"], frac


def test_blurred_half_is_rejected(data_dir):
    im = _images(data_dir, "lymphoma_iicbu/FL", 1)[0]
    blurred = im.copy()
    w = im.shape[1] // 2
    blurred[:, w:] = ndimage.gaussian_filter(im[:, w:].astype(np.float32), sigma=(4, 4, 0)).astype(np.uint8)
    m = valid_area_mask(blurred)
    assert m[:, : w - 20].mean() > 0.9
    assert m[:, w + 20:].mean() < 0.2


def test_glass_is_rejected():
    glass = np.full((64, 64, 3), 245, np.uint8)
    assert not valid_area_mask(glass).any()


def test_deterministic_and_shapes(data_dir):
    im = _images(data_dir, "crc_val_he_7k_test70/TUM", 1)[0]
    a, b = valid_area_mask(im), valid_area_mask(im.copy())
    assert a.dtype == bool and a.shape == im.shape[:2] and np.array_equal(a, b)
    comps = mask_components(im, MaskConfig(nuclei_threshold="otsu"))
    assert set(comps) == {"tissue", "focus", "cellular", "valid"}


@pytest.mark.parametrize("bad,match", [(np.zeros((8, 8), np.uint8), "RGB"), (np.zeros((8, 8, 3), np.float32), "uint8"),
                                        (np.zeros((1, 8, 3), np.uint8), "at least")])
def test_bad_input_named(bad, match):
    with pytest.raises(ValueError, match=match):
        valid_area_mask(bad)
