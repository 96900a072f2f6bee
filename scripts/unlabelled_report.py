"""Rebuild docs/study/unlabelled_*/results.{json,md,png} from the run files written so far, while (or
after) scripts/unlabelled_study.sh runs: the study writes them only when every run is done."""
import sys

from saganet.study import run_labels, summarise

VARIANTS = ("saganet", "baseline", "classic")
POOL_METHODS = ("selftrain", "pretrain", "pretrain+selftrain")

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "docs/study/unlabelled_lymphoma"
    shots = [int(s) for s in sys.argv[2:]] or [20, 10]
    labels = [label for label, *_ in run_labels(VARIANTS, ("scratch",), POOL_METHODS)] + ["saganet+fixmatch"]
    summarise(out, shots, labels)
    print(open(f"{out}/results.md").read())
