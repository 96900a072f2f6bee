"""Multi-scale input, measured (issue 12) on the pool protocol's draws of a pooled study.

    .venv/bin/python scripts/multiscale_check.py [STUDY] [--out DIR] [--variant baseline] [--shots 20 10] [--repeats 0 1 2]

Per draw, with the study's settings: the variant at native resolution (the study's own row, trained
again: same seed, so the same number, which is checked), at half resolution (its 64 px crops see
four times the area: tissue architecture rather than nuclei), and the two averaged. Against the same
cost spent on a second native-resolution model (another seed), so that a gain of the average is
credited to the second scale only where it beats a second model at the same scale. Test images are
the study's; nothing is chosen on them. Writes DIR/{n}shot_r{r}.json (resumable: a finished draw is
kept) and prints the table.
"""
import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from saganet.atomic import atomic_write_text
from saganet.config import TrainConfig
from saganet.data import load_dataset, load_images
from saganet.evaluate import classification_metrics, predict
from saganet.preprocess import Preprocessing, channel_stats, prepare_images
from saganet.study import draw_pool_split
from saganet.train import fit

SCALES = {"native": 1.0, "half": 0.5}
SECOND_SEED = 1000  # the same-cost control: seed r + 1000 at native resolution
COMBINATIONS = {"native+half": ("native", "half"), "native+native_seed2": ("native", "native_seed2")}


def run_draw(labels, class_names, split, cfg, n, r, prepared):
    labelled, _, test = split
    train = labelled[n]
    probs, seconds = {}, {}
    for name, scale, seed in (("native", 1.0, r), ("half", 0.5, r), ("native_seed2", 1.0, r + SECOND_SEED)):
        imgs, masks = prepared[scale]
        mean, std = channel_stats([imgs[i] for i in train])
        prep = replace(Preprocessing(scale=scale, mask=cfg.mask), mean=mean, std=std)
        t0 = time.time()
        model, _ = fit([imgs[i] for i in train], [masks[i] for i in train], labels[train], class_names,
                       replace(cfg, scale=scale, seed=seed), prep, log=lambda m: None, progress=False)
        p = predict(model, prep, [imgs[i] for i in test], [masks[i] for i in test])
        probs[name] = p / p.sum(1, keepdims=True)  # the length head's scores do not sum to 1
        seconds[name] = round(time.time() - t0, 1)
    for name, (a, b) in COMBINATIONS.items():
        probs[name] = 0.5 * (probs[a] + probs[b])
    scores = {k: classification_metrics(labels[test], p, class_names)["balanced_accuracy"] for k, p in probs.items()}
    return {"shots": n, "repeat": r, "variant": cfg.variant, "balanced_accuracy": scores, "seconds": seconds,
            "test_images": len(test), "probs": {k: np.round(p, 6).tolist() for k, p in probs.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", nargs="?", default="docs/study/unlabelled_lymphoma")
    ap.add_argument("--out", default="docs/study/multiscale_lymphoma")
    ap.add_argument("--variant", default="baseline")
    ap.add_argument("--shots", type=int, nargs="+", default=[20, 10])
    ap.add_argument("--repeats", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    study, out = Path(a.study), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    config = study / "study_config.json"
    if not config.is_file():
        raise SystemExit(f"{config}: not found; STUDY must be a `saganet study` folder")
    meta = json.loads(config.read_text())
    if meta.get("unlabelled_fraction") is None:  # set by every pooled study, old ones too
        raise SystemExit(f"{config}: not a pooled study (run with --pool-methods or --pool-split); its draws cannot be redrawn here")
    cfg = replace(TrainConfig.from_dict(meta["train_config"]), variant=a.variant)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    samples, class_names = load_dataset(meta["data"])
    raw, samples, _ = load_images(samples, skip_bad=True)
    labels = np.array([class_names.index(s.label) for s in samples])
    patients = [s.patient for s in samples] if all(s.patient for s in samples) else None  # as the study splits
    prepared = {s: prepare_images(raw, Preprocessing(scale=s, mask=cfg.mask)) for s in SCALES.values()}
    rows = []
    for n in a.shots:
        for r in a.repeats:
            path = out / f"{n}shot_r{r}.json"
            if not path.is_file():
                split = draw_pool_split(labels, patients, max(a.shots), r, meta["unlabelled_fraction"])
                rec = run_draw(labels, class_names, split, cfg, n, r, prepared)
                row = study / "runs" / f"{n}shot_r{r}_{a.variant}.json"
                if row.is_file():  # premise: the native model is the study's row
                    rec["study_row_balanced_accuracy"] = json.loads(row.read_text())["balanced_accuracy"]
                atomic_write_text(path, json.dumps(rec))
                print(f"{n} shots, draw {r}: " + ", ".join(f"{k} {v:.3f}" for k, v in rec["balanced_accuracy"].items()),
                      flush=True)
            rows.append(json.loads(path.read_text()))
    print_table(rows)


def print_table(rows):
    names = list(rows[0]["balanced_accuracy"])
    print("\n| shots | draws | " + " | ".join(names) + " | native+half - native+native_seed2 (wins / losses) |")
    print("|---|---|" + "---|" * (len(names) + 1))
    for n in sorted({r["shots"] for r in rows}, reverse=True):
        rs = [r for r in rows if r["shots"] == n]
        d = np.array([r["balanced_accuracy"]["native+half"] - r["balanced_accuracy"]["native+native_seed2"] for r in rs])
        print(f"| {n} | {len(rs)} | " + " | ".join(f"{np.mean([r['balanced_accuracy'][k] for r in rs]):.3f}" for k in names)
              + f" | {100 * d.mean():+.1f} ({int((d > 0).sum())} / {int((d < 0).sum())}) |")
    same = [r["balanced_accuracy"]["native"] == r.get("study_row_balanced_accuracy") for r in rows]
    print(f"\nnative model scored exactly as the study's row: {sum(same)} of {len(same)}")


if __name__ == "__main__":
    main()
