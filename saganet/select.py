"""`--variant auto`: the variant chosen by cross-validation inside the labelled training images.

Why: SagaNet's mask, gate and length head do not help on every task (Part 2 of docs/results.md:
tissue types, small images), and there it lost to the plain baseline. With "auto", each candidate
(`TrainConfig.auto_candidates`, the baseline and SagaNet by default, simplest first) trains at the
run's budget on k-1 stratified folds of the labelled images and is scored on the held-out fold
(balanced accuracy). Only the labelled training images given here are read: no validation, pool or
test image takes part in the choice.

The choice is the one-standard-error rule (Hastie, Tibshirani & Friedman, The Elements of Statistical
Learning, 2nd ed., section 7.10): the first candidate, in order of preference, whose mean is within
`auto_se` standard errors of the best mean (the SE of the best candidate's fold scores). With 3-5
images per class one held-out image moves a fold's score by 5-15 points, so "the best mean" alone
follows noise; `auto_se` 0 gives it back (a tie still goes to the earlier candidate).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from sklearn.model_selection import StratifiedKFold

from .config import VARIANTS, TrainConfig
from .evaluate import classification_metrics, predict


def cross_validate(images, masks, labels, class_names, cfg: TrainConfig, prep, log=print) -> dict:
    """{"candidates", "folds", "scores" (mean balanced accuracy per candidate), "fold_scores",
    "standard_error", "chosen"} for `cfg.auto_candidates` on these labelled images, labelled-only training."""
    from .train import fit  # here, not at the top: train.py imports this module

    unknown = [v for v in cfg.auto_candidates if v not in VARIANTS]
    if unknown or not cfg.auto_candidates:
        raise ValueError(f"--auto-candidates {list(cfg.auto_candidates)}: choose one or more of {sorted(VARIANTS)}")
    labels = np.asarray(labels)
    smallest = int(np.bincount(labels, minlength=len(class_names)).min())
    folds = min(cfg.auto_folds, smallest)
    if folds < 2:
        raise ValueError(f"--variant auto (the default) cross-validates inside the labelled images and needs at least "
                         f"2 per class; the smallest class has {smallest}: name one variant, e.g. --variant saganet")
    split = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed).split(np.zeros(len(labels)), labels))
    fold_scores = {}
    for v in cfg.auto_candidates:
        fold_scores[v] = []
        for k, (tr, va) in enumerate(split):
            model, _ = fit([images[i] for i in tr], [masks[i] for i in tr], labels[tr], class_names,
                           replace(cfg, variant=v, semi="", val_fraction=0.0), prep, log=lambda m: None, progress=False)
            probs = predict(model, prep, [images[i] for i in va], [masks[i] for i in va])
            fold_scores[v].append(classification_metrics(labels[va], probs, class_names)["balanced_accuracy"])
        log(f"auto: {v} {np.mean(fold_scores[v]):.3f} balanced accuracy over {folds} folds of the labelled images "
            f"({', '.join(f'{s:.3f}' for s in fold_scores[v])})")
    chosen, se = choose(fold_scores, cfg.auto_se)
    log(f"auto: chose {chosen} (within {cfg.auto_se:g} standard errors of the best: {se:.3f} each)")
    return {"candidates": list(cfg.auto_candidates), "folds": folds, "auto_se": cfg.auto_se,
            "scores": {v: float(np.mean(s)) for v, s in fold_scores.items()}, "fold_scores": fold_scores,
            "standard_error": se, "chosen": chosen}


def choose(fold_scores: dict, se_factor: float) -> tuple[str, float]:
    """(chosen, standard error): the first candidate of `fold_scores` (in order of preference) whose
    mean fold score is within `se_factor` standard errors of the best mean."""
    means = {v: float(np.mean(s)) for v, s in fold_scores.items()}
    best = max(means, key=means.get)
    s = np.asarray(fold_scores[best], dtype=float)
    se = float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else 0.0
    # 1e-9: fold scores are fractions like 4/7, and an exact tie must count as within
    return next(v for v in means if means[v] >= means[best] - se_factor * se - 1e-9), se


def resolve_variant(images, masks, labels, class_names, cfg: TrainConfig, prep, log=print):
    """(cfg, selection): cfg unchanged and None unless cfg.variant is "auto"; then cfg with the chosen
    variant, and cross_validate's record."""
    if cfg.variant != "auto":
        return cfg, None
    selection = cross_validate(images, masks, labels, class_names, cfg, prep, log=log)
    return replace(cfg, variant=selection["chosen"]), selection
