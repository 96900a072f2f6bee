"""Rebuild docs/study/<study>/results.{json,md,png} from the run files written so far, while (or
after) a study script runs: `saganet study` writes them only when every run is done.
Usage: unlabelled_report.py DIR [SHOTS...]; rows are the variants found in DIR/runs."""
import json
import sys
from pathlib import Path

from saganet.config import VARIANT_NAMES
from saganet.study import summarise


def labels_in(out: Path) -> list[str]:
    """Every row label of the run files, base variants in VARIANT_NAMES' order, each before its +rows."""
    found = {json.loads(p.read_text())["variant"] for p in (out / "runs").glob("*.json")}
    order = {v: i for i, v in enumerate(VARIANT_NAMES)}
    return sorted(found, key=lambda label: (order.get(label.split("+")[0], len(order)), label.count("+"), label))


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/study/unlabelled_lymphoma")
    shots = [int(s) for s in sys.argv[2:]] or [20, 10]
    summarise(out, shots, labels_in(out))
    print((out / "results.md").read_text())
