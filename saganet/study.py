"""The small-sample protocol: N shots per class, repeats, every variant on the same draws.

Each (shots, repeat, variant) run writes its own JSON under OUT/runs/, so an interrupted study
resumes where it stopped; results.json, results.md and results.png are rebuilt from those files.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .atomic import atomic_write, atomic_write_text
from .config import INITS, POOL_METHODS, TrainConfig
from .classic import classic_features, classic_probs, fit_classic
from .data import load_dataset, load_images
from .evaluate import classification_metrics, predict
from .preprocess import Preprocessing, channel_stats, prepare_images
from .select import resolve_variant
from .selftrain import self_train
from .train import fit, pretrain_on
from .unlabelled import load_unlabelled



ENUMERATE_PATIENTS = 12  # up to this many patients every partition is tried (2^12); beyond, a seeded sample
SAMPLED_SPLITS = 4096


def patient_splits(labels: np.ndarray, patients: list[str]) -> list[tuple[set, set]]:
    """(train patients, test patients) partitions in which every class is on both sides: all of them
    for a few patients, else up to SAMPLED_SPLITS drawn at random (seeded; 2^n partitions of 40
    patients could never be listed)."""
    pats = sorted(set(patients))
    classes = set(labels.tolist())
    has = {p: set() for p in pats}  # the classes each patient has
    for label, p in zip(labels.tolist(), patients):
        has[p].add(label)
    if len(pats) <= ENUMERATE_PATIENTS:
        candidates = (set(t) for k in range(1, len(pats)) for t in itertools.combinations(pats, k))
    else:
        rng = np.random.default_rng(2021)
        drawn = {tuple(sorted(rng.choice(pats, size=int(rng.integers(1, len(pats))), replace=False)))
                 for _ in range(SAMPLED_SPLITS)}
        candidates = (set(t) for t in sorted(drawn, key=lambda t: (len(t), t)))
    out = []
    for test in candidates:
        train = set(pats) - test
        if set().union(*(has[p] for p in train)) == classes and set().union(*(has[p] for p in test)) == classes:
            out.append((train, test))
    return out


def draw_split(labels: np.ndarray, patients: list[str] | None, shots: int, repeat: int):
    """Training indices (shots per class) and test indices for one repeat.

    With patients, the repeat cycles through the patient partitions that put every class on both
    sides with at least `shots` training images per class; the shots come from training patients
    only and every image of the test patients is tested.
    """
    rng = np.random.default_rng([repeat, shots, 2021])
    if patients:
        splits = [(tr, te) for tr, te in patient_splits(labels, patients)
                  if all(sum(1 for l, p in zip(labels, patients) if l == c and p in tr) >= shots for c in np.unique(labels))]
        if not splits:
            raise ValueError(f"no patient split puts every class in both train and test with {shots} training images per class")
        train_p, test_p = splits[repeat % len(splits)]
        pool = np.array([p in train_p for p in patients])
        test = np.flatnonzero(np.array([p in test_p for p in patients]))
    else:
        pool = np.ones(len(labels), bool)
        test = None
    train = []
    for c in np.unique(labels):
        idx = np.flatnonzero(pool & (labels == c))
        if len(idx) < shots:
            raise ValueError(f"class {c} has only {len(idx)} eligible training images, fewer than {shots} shots")
        train.extend(rng.choice(idx, size=shots, replace=False).tolist())
    train = np.array(sorted(train))
    if test is None:
        test = np.setdiff1d(np.arange(len(labels)), train)
    return train, test


def draw_pool_split(labels: np.ndarray, patients: list[str] | None, max_shots: int, repeat: int,
                    unlabelled_fraction: float) -> tuple[dict, np.ndarray, np.ndarray]:
    """The protocol with an unlabelled pool, for one repeat: ({shots: labelled indices}, pool, test).

    Each class's images are shuffled once per repeat; the labelled images of N shots are the first N
    of that order (so 10 shots are inside 20 shots), and the images after the first `max_shots` are
    split, stratified, into the pool (`unlabelled_fraction` of them) and the test set. Pool and test
    are the same for every shot count of the repeat, so one pretraining serves all of them. With
    patients, test patients are tested whole (as in `draw_split`) and the pool is every non-labelled
    image of the training patients: pool and test never share a patient.
    """
    if not 0 < unlabelled_fraction < 1:
        raise ValueError(f"--unlabelled-fraction must be between 0 and 1 (exclusive), got {unlabelled_fraction}")
    rng = np.random.default_rng([repeat, max_shots, 2026])
    if patients:
        train_ref, test = draw_split(labels, patients, max_shots, repeat)
        train_p = {patients[i] for i in train_ref}
        eligible = np.array([p in train_p for p in patients])
    else:
        eligible, test = np.ones(len(labels), bool), []
    shots_order, pool, test = {}, [], list(test)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(eligible & (labels == c)))
        if len(idx) < max_shots + (0 if patients else 2):
            raise ValueError(f"class {c} has only {len(idx)} eligible images: too few for {max_shots} shots "
                             f"plus a pool and a test set")
        shots_order[c], rest = idx[:max_shots], idx[max_shots:]
        if patients:
            pool.extend(rest.tolist())
        else:
            k = min(len(rest) - 1, max(1, int(round(unlabelled_fraction * len(rest)))))
            pool.extend(rest[:k].tolist())
            test.extend(rest[k:].tolist())
    labelled = {n: np.array(sorted(i for c in shots_order for i in shots_order[c][:n]))
                for n in range(1, max_shots + 1)}
    return labelled, np.array(sorted(pool)), np.array(sorted(test))


# Rows that learn from the unlabelled pool: self-training (selftrain.py), in-domain SimCLR pretraining,
# FixMatch (semi.py), pretraining followed by either, and the pretrained encoder kept frozen.
def run_labels(variants, inits, pool_methods=()) -> list[tuple[str, str, str, str]]:
    """(label, variant, init, pool method) for every run of a repeat; classic once.

    Labels: `saganet` (from scratch), `saganet+finetune`, `saganet+frozen` (outside encoder),
    `saganet+selftrain`, `saganet+pretrain`, `saganet+pretrain+selftrain`, `saganet+pretrain+frozen`, ...
    (the unlabelled pool), `classic`."""
    out = []
    for v in variants:
        if v == "classic":
            out.append(("classic", v, "scratch", ""))
            continue
        for init in inits:
            if init not in INITS:
                raise ValueError(f"unknown init {init!r}; choose from {INITS}")
            out.append((v if init == "scratch" else f"{v}+{init}", v, init, ""))
        for pm in pool_methods:
            if pm not in POOL_METHODS:
                raise ValueError(f"unknown pool method {pm!r}; choose from {POOL_METHODS}")
            out.append((f"{v}+{pm}", v, "scratch", pm))
    return out


def run_study(data, out, shots, repeats, variants, cfg: TrainConfig, inits=("scratch",), pool_methods=(),
              unlabelled_fraction: float = 0.5, unlabelled=(), pretrain_steps: int = 150, pool_split: bool = False,
              first_repeat: int = 0, log=print) -> dict:
    """Every run of the study, draws first_repeat .. first_repeat+repeats-1; with pool_methods (or
    pool_split: labelled-only rows on the same draws as a pooled study's), the protocol of
    `draw_pool_split` for every row."""
    if any(i != "scratch" for i in inits) and not cfg.pretrained:
        raise ValueError("inits finetune/frozen need an encoder (--pretrained)")
    if cfg.stain_norm:
        raise ValueError("the study prepares every image once and does not support --stain-norm; "
                         "compare stain normalisation with saganet train/eval")
    pooled = bool(pool_methods) or pool_split
    if unlabelled and not pool_methods:
        raise ValueError("--unlabelled adds to the pool of --pool-methods; name at least one")
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    samples, class_names = load_dataset(data)
    raw, samples, bad = load_images(samples, skip_bad=True, log=log)
    labels = np.array([class_names.index(s.label) for s in samples])
    patients = [s.patient for s in samples] if all(s.patient for s in samples) else None
    base = Preprocessing(scale=cfg.scale, mask=cfg.mask)
    t_prep = time.time()
    imgs, masks = prepare_images(raw, base, names=[s.path for s in samples])
    log(f"{data}: {len(samples)} images, classes {class_names}, patients {sorted(set(patients)) if patients else 'unknown'}; "
        f"prepared in {time.time() - t_prep:.0f}s; mean valid fraction {np.mean([m.mean() for m in masks]):.2f}")
    feats = None
    runs = run_labels(variants, inits, pool_methods)
    meta = {"data": str(data), "class_names": class_names, "train_config": cfg.to_dict(), "skipped_files": bad,
            "inits": list(inits), "pool_methods": list(pool_methods),
            "pool_split": pooled, "unlabelled_fraction": unlabelled_fraction if pooled else None,
            "unlabelled_sources": [str(u) for u in unlabelled], "pretrain_steps": pretrain_steps,
            "patient_split": bool(patients), "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}"}
    atomic_write_text(out / "study_config.json", json.dumps(meta, indent=2))
    t_study = time.time()
    total, k = len(shots) * repeats * len(runs), 0
    for r in range(first_repeat, first_repeat + repeats):
        pool_paths, pool_images = [], None
        if pooled:
            labelled, pool, test = draw_pool_split(labels, patients, max(shots), r, unlabelled_fraction)
            # The pool leaves here as paths: whatever trains on it cannot see a label.
            pool_paths = [samples[i].path for i in pool] + [str(u) for u in unlabelled]
        for n in shots:
            train, test = (labelled[n], test) if pooled else draw_split(labels, patients, n, r)
            teachers = {}  # this draw's models without pool images, by (variant, encoder, frozen): self-training's teachers
            selections = {}  # variant "auto": this draw's choice, by (encoder, frozen), made once for all its rows
            for label, v, init, pm in runs:
                k += 1
                path = out / "runs" / f"{n}shot_r{r}_{label}.json"
                if path.is_file():
                    continue
                t0 = time.time()
                if v == "classic":
                    if feats is None:
                        log("computing classic features for every image (once)")
                        feats = np.stack([classic_features(im) for im in imgs])
                    clf = fit_classic(feats[train], labels[train], seed=r)
                    probs = classic_probs(clf, feats[test])
                else:
                    mean, std = channel_stats([imgs[i] for i in train])
                    prep = replace(base, mean=mean, std=std)
                    pretrained = cfg.pretrained if init != "scratch" else ""
                    if "pretrain" in pm:
                        pretrained = str(pretrain_on(pool_paths, out / "encoders" / f"r{r}.safetensors",
                                                     replace(cfg, seed=r), steps=pretrain_steps, log=log))
                    if ("selftrain" in pm or "fixmatch" in pm) and pool_images is None:
                        pool_images = prepare_images(load_unlabelled(pool_paths, log=log)[0], base)
                    frozen = init == "frozen" or pm == "pretrain+frozen"
                    run_cfg = replace(cfg, variant=v, seed=r, pretrained=pretrained, freeze_backbone=frozen,
                                      semi="fixmatch" if "fixmatch" in pm else "")
                    shots_data = ([imgs[i] for i in train], [masks[i] for i in train], labels[train], class_names)
                    if v == "auto":
                        if (pretrained, frozen) not in selections:
                            selections[(pretrained, frozen)] = resolve_variant(*shots_data, run_cfg, prep, log=log)[1]
                        run_cfg = replace(run_cfg, variant=selections[(pretrained, frozen)]["chosen"])
                    labelled_data = (*shots_data, run_cfg, prep)
                    key = (v, pretrained, frozen)
                    if "selftrain" in pm:
                        model, _, _ = self_train(*labelled_data, pool_images, teacher=teachers.get(key),
                                                 log=lambda m: None, progress=False)
                    else:
                        model, _ = fit(*labelled_data, log=lambda m: None, progress=False,
                                       unlabelled=pool_images if "fixmatch" in pm else None)
                        if "fixmatch" not in pm:
                            teachers[key] = model
                    test_images, test_masks = [imgs[i] for i in test], [masks[i] for i in test]
                    probs = predict(model, prep, test_images, test_masks)
                    # Read-outs that need no more training, recorded beside the plain one: test-time
                    # flips and turns, and a late fusion with the classic pipeline on the same shots.
                    if feats is None:
                        feats = np.stack([classic_features(im) for im in imgs])
                    fused = 0.5 * (probs / probs.sum(1, keepdims=True) +
                                   classic_probs(fit_classic(feats[train], labels[train], seed=r), feats[test]))
                    extra = {"tta": classification_metrics(labels[test], predict(model, prep, test_images, test_masks,
                                                                                 tta=True), class_names),
                             "fused_classic": classification_metrics(labels[test], fused, class_names)}
                m = classification_metrics(labels[test], probs, class_names)
                rec = {"shots": n, "repeat": r, "variant": label, "seconds": round(time.time() - t0, 1),
                       "train_images": len(train), "test_images": len(test), "pool_images": len(pool_paths), **m}
                if v == "auto":
                    rec["selection"] = selections[(pretrained, frozen)]
                if v != "classic":
                    rec["read_outs"] = {k: {"balanced_accuracy": e["balanced_accuracy"], "accuracy": e["accuracy"],
                                            "confusion_matrix": e["confusion_matrix"]} for k, e in extra.items()}
                atomic_write_text(path, json.dumps(rec, indent=2))
                log(f"[{k}/{total}] {n} shots, repeat {r}, {label}: balanced accuracy {m['balanced_accuracy']:.3f} ({rec['seconds']}s)")
    summary = summarise(out, shots, [label for label, _, _, _ in runs])
    summary["wall_seconds_this_invocation"] = round(time.time() - t_study, 1)
    return summary


READ_OUTS = ("tta", "fused_classic")


def summarise(out, shots, variants) -> dict:
    out = Path(out)
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    table = {}
    for n in shots:
        for v in variants:
            rs = [r for r in runs if r["shots"] == n and r["variant"] == v]
            if not rs:
                continue
            b = np.array([r["balanced_accuracy"] for r in rs])
            table[f"{n}/{v}"] = {"shots": n, "variant": v, "repeats": len(rs), "balanced_accuracy_mean": float(b.mean()),
                                  "balanced_accuracy_std": float(b.std(ddof=1)) if len(b) > 1 else 0.0,
                                  "accuracy_mean": float(np.mean([r["accuracy"] for r in rs])),
                                  "macro_f1_mean": float(np.mean([r["macro_f1"] for r in rs])),
                                  "seconds_mean": float(np.mean([r["seconds"] for r in rs])),
                                  "test_images": sorted({int(r["test_images"]) for r in rs})}
            with_read_outs = [r["read_outs"] for r in rs if "read_outs" in r]
            for k in READ_OUTS:
                vals = [ro[k]["balanced_accuracy"] for ro in with_read_outs]
                table[f"{n}/{v}"][f"{k}_balanced_accuracy_mean"] = float(np.mean(vals)) if vals else None
                table[f"{n}/{v}"][f"{k}_repeats"] = len(vals)
    # Paired differences on the same training draws: every variant against the baseline with the
    # same initialisation (`saganet+frozen` - `baseline+frozen`), and every pretrained variant
    # against itself from scratch (what pretraining bought).
    paired = []
    for n in shots:
        for v in variants:
            if v.startswith("classic"):
                continue
            suffix = v[v.index("+"):] if "+" in v else ""
            refs = ["baseline" + suffix] + ([v.split("+")[0]] if "+" in v else []) + (["saganet" + suffix] if v.startswith("auto") else [])
            for ref in refs:
                if ref == v:
                    continue
                base = {r["repeat"]: r["balanced_accuracy"] for r in runs if r["shots"] == n and r["variant"] == ref}
                d = np.array([r["balanced_accuracy"] - base[r["repeat"]] for r in runs
                              if r["shots"] == n and r["variant"] == v and r["repeat"] in base])
                if len(d):
                    paired.append({"shots": n, "variant": v, "reference": ref, "repeats": len(d),
                                   "minus_reference_mean": float(d.mean()),
                                   "minus_reference_std": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                                   "wins": int((d > 0).sum()), "losses": int((d < 0).sum())})
    summary = {"table": list(table.values()), "paired": paired, "runs": runs}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    lines = ["| shots | variant | repeats | balanced acc. (mean +- std) | accuracy | macro-F1 | test images | s/run |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table.values():
        t = row["test_images"]
        n_test = str(t[0]) if len(t) == 1 else f"{t[0]}-{t[-1]}"
        lines.append(f"| {row['shots']} | {row['variant']} | {row['repeats']} | {row['balanced_accuracy_mean']:.3f} +- "
                     f"{row['balanced_accuracy_std']:.3f} | {row['accuracy_mean']:.3f} | {row['macro_f1_mean']:.3f} | "
                     f"{n_test} | {row['seconds_mean']:.0f} |")
    read_rows = [row for row in table.values() if any(row.get(f"{k}_repeats") for k in READ_OUTS)]
    if read_rows:
        lines += ["", "The same models read out two more ways (no more training): with test-time flips and turns "
                  "(tta), and averaged with the classic pipeline trained on the same shots (fused_classic); "
                  "balanced accuracy, mean over the repeats that recorded them:", "",
                  "| shots | variant | " + " | ".join(READ_OUTS) + " | repeats |", "|---|---|" + "---|" * len(READ_OUTS) + "---|"]
        lines += [f"| {row['shots']} | {row['variant']} | " +
                  " | ".join(f"{row[f'{k}_balanced_accuracy_mean']:.3f}" for k in READ_OUTS) +
                  f" | {row[f'{READ_OUTS[0]}_repeats']} |" for row in read_rows]
    if paired:
        lines += ["", "Paired differences on the same training draws, balanced accuracy:", "",
                  "| shots | variant | minus | mean +- std | wins / losses |", "|---|---|---|---|---|"]
        lines += [f"| {p['shots']} | {p['variant']} | {p['reference']} | {p['minus_reference_mean']:+.3f} +- {p['minus_reference_std']:.3f} | "
                  f"{p['wins']} / {p['losses']} |" for p in paired]
    chosen = [(r["shots"], r["variant"], r["selection"]["chosen"]) for r in runs if "selection" in r]
    if chosen:
        counts = {}
        for n, v, c in chosen:
            counts.setdefault((n, v), []).append(c)
        lines += ["", "What `auto` chose by cross-validation inside the labelled shots:", ""]
        lines += [f"- {n} shots, {v}: " + ", ".join(f"{c} x{cs.count(c)}" for c in dict.fromkeys(cs))
                  for (n, v), cs in counts.items()]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    _plot(table, out / "results.png")
    return summary


def _plot(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not table:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    variants = sorted({r["variant"] for r in table.values()})
    for v in variants:
        rows = sorted((r for r in table.values() if r["variant"] == v), key=lambda r: r["shots"])
        ax.errorbar([r["shots"] for r in rows], [r["balanced_accuracy_mean"] for r in rows],
                    yerr=[r["balanced_accuracy_std"] for r in rows], marker="o", capsize=3, label=v)
    ax.set_xlabel("training images per class")
    ax.set_ylabel("balanced accuracy (test)")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
