"""Design checks without test images: 3-fold CV inside the 20-shot training draws of repeats 0 and 1.

    .venv/bin/python scripts/design_checks.py '{"variant": "saganet", "crop": 64}' [DATASET]

The JSON holds TrainConfig fields (or {"variant": "classic"}). Prints mean +- s.e. of balanced
accuracy over the 6 folds. This is how docs/results.md chose crop size, scale, depth, epochs, lr
and stain jitter: only training images of the study's own draws are ever scored.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from saganet.classic import classic_features, classic_probs, fit_classic
from saganet.data import load_dataset, load_images
from saganet.evaluate import classification_metrics, predict
from saganet.study import draw_split
from saganet.config import TrainConfig
from saganet.train import fit, make_preprocessing
from saganet.preprocess import prepare_images


def main():
    over = json.loads(sys.argv[1])
    data = Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/lymphoma_iicbu")
    shots = over.pop("shots", 20)
    torch.set_num_threads(2)
    samples, classes = load_dataset(data)
    raw, samples, _ = load_images(samples)
    y = np.array([classes.index(s.label) for s in samples])
    scores, t0 = [], time.time()
    for repeat in (0, 1):
        train, _ = draw_split(y, None, shots, repeat)
        for a, b in StratifiedKFold(3, shuffle=True, random_state=repeat).split(train, y[train]):
            A, B = train[a], train[b]
            cfg = TrainConfig(**{k: v for k, v in over.items() if not (k == "variant" and v == "classic")})
            prep = make_preprocessing([raw[i] for i in A], cfg)
            imgs, masks = prepare_images([raw[i] for i in np.concatenate([A, B])], prep)
            if over.get("variant") == "classic":
                f = np.stack([classic_features(im) for im in imgs])
                probs = classic_probs(fit_classic(f[:len(A)], y[A]), f[len(A):])
            else:
                model, _ = fit(imgs[:len(A)], masks[:len(A)], y[A], classes, cfg, prep, log=lambda m: None, progress=False)
                probs = predict(model, prep, imgs[len(A):], masks[len(A):])
            scores.append(classification_metrics(y[B], probs, classes)["balanced_accuracy"])
    print(json.dumps(dict(over, shots=shots)), f"cv balanced accuracy {np.mean(scores):.3f} +- "
          f"{np.std(scores) / np.sqrt(len(scores)):.3f} folds {np.round(scores, 2).tolist()} {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
