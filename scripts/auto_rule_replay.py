"""Replay `auto`'s choice rule on recorded cross-validations: which variant each rule would have
chosen, and that variant's test score on the same draw.

Exact without retraining because a run is deterministic: an `auto` run's test score equals that of
the row of the variant it chose, trained on the same draw (every auto run of docs/study/, checked
2026-11-29).
Usage: python scripts/auto_rule_replay.py STUDY_DIR [--rows OTHER_DIR] [--se 0 1 ...]
[--candidates baseline saganet]; STUDY_DIR holds `auto` rows (their recorded fold scores), and it or
OTHER_DIR (a study on the same draws) the rows of every candidate.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from saganet.config import TrainConfig
from saganet.select import choose


def _runs(study: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted((study / "runs").glob("*.json"))]


def replay(study: Path, se_factors, candidates, rows: Path | None = None):
    runs = _runs(study)
    score = {(r["shots"], r["repeat"], r["variant"]): r["balanced_accuracy"] for r in runs + _runs(rows or study)}
    # The premise, checked on these runs: each auto run scored exactly as the row it chose.
    same = [score[(r["shots"], r["repeat"], r["selection"]["chosen"])] == r["balanced_accuracy"] for r in runs
            if r["variant"] == "auto" and (r["shots"], r["repeat"], r["selection"]["chosen"]) in score]
    lines = [f"auto runs that scored exactly as the row they chose: {sum(same)} of {len(same)}", "",
             "| shots | rule | repeats | chosen | mean test balanced acc. | minus baseline (wins / losses) |",
             "|---|---|---|---|---|---|"]
    for shots in sorted({r["shots"] for r in runs}):
        autos = [r for r in runs if r["shots"] == shots and r["variant"] == "auto"
                 and all((shots, r["repeat"], v) in score for v in candidates)]
        for se in se_factors:
            picks, test, diff = [], [], []
            for r in autos:
                sel = r["selection"]
                folds = {v: sel["fold_scores"][v] for v in candidates}  # in this order of preference
                c = choose(folds, se)[0]
                picks.append(c)
                test.append(score[(shots, r["repeat"], c)])
                diff.append(test[-1] - score[(shots, r["repeat"], "baseline")])
            d = np.array(diff)
            lines.append(f"| {shots} | {se:g} SE, {candidates[0]} first | {len(autos)} | " +
                         ", ".join(f"{c} x{picks.count(c)}" for c in dict.fromkeys(picks)) +
                         f" | {np.mean(test):.3f} | {d.mean():+.3f} ({(d > 0).sum()} / {(d < 0).sum()}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("study", type=Path)
    a.add_argument("--rows", type=Path, default=None, help="a study on the same draws that holds the candidates' rows")
    a.add_argument("--se", type=float, nargs="+", default=[0.0, 1.0])
    a.add_argument("--candidates", nargs="+", default=list(TrainConfig().auto_candidates),
                   help="order of preference (default: TrainConfig's)")
    args = a.parse_args()
    print(replay(args.study, args.se, args.candidates, args.rows))
