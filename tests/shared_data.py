"""Where the real data lives, and small helpers over it, for tests and benchmarks."""
import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("SAGANET_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data. Missing: a failure under CI=true, a skip with the reason elsewhere."""
    if not (DATA / "README.md").is_file():
        msg = f"real data folder {DATA} is missing (set SAGANET_DATA or place shared/data beside the repository)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return DATA


def few_per_class(data_dir: Path, name: str, n: int):
    """The first n images of every class of a shared set: (uint8 images, labels, class names)."""
    import numpy as np

    from saganet.data import load_dataset, load_images

    samples, classes = load_dataset(data_dir / name)
    picked = [s for c in classes for s in [x for x in samples if x.label == c][:n]]
    raw, picked, _ = load_images(picked)
    return raw, np.array([classes.index(s.label) for s in picked]), classes


def prepared_per_class(data_dir: Path, name: str, n: int, cfg):
    """few_per_class, prepared for training under cfg: (images, masks, labels, class names, preprocessing)."""
    from saganet.preprocess import prepare_images
    from saganet.train import make_preprocessing

    raw, y, classes = few_per_class(data_dir, name, n)
    prep = make_preprocessing(raw, cfg)
    return (*prepare_images(raw, prep), y, classes, prep)


REPO = Path(__file__).resolve().parents[1]
DEMO_BUNDLE = REPO / "models" / "demo-crc7"


def crc_tiles(data_dir: Path, n: int = 14):
    """n real 224x224 CRC-VAL-HE-7K tiles, spread over the classes, as uint8 (n, 224, 224, 3)."""
    import numpy as np
    from PIL import Image

    files = sorted((data_dir / "crc_val_he_7k_test70").glob("*/*.jpg"))
    pick = [files[i] for i in np.linspace(0, len(files) - 1, n).astype(int)]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in pick])
