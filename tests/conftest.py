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
