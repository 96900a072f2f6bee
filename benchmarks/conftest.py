import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from shared_data import data_dir  # noqa: E402,F401  (same data rules as the tests)
