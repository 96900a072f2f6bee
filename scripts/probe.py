"""Linear probe of frozen encoders on a labelled set: the cheap read-out used to choose the
pretraining method (cross-validation inside the training shots only) and to draw the learning
curves (test accuracy against pretraining time and tiles).

For each repeat of the study's draws: BN statistics are re-estimated on the training shots
(AdaBN, as `--freeze-backbone` does), every whole image is embedded by global average pooling of
the last feature map, and a standardised logistic regression is fitted on the shots.

  python scripts/probe.py DATA ENCODER... --shots 20 --repeats 5 [--out probe.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from saganet.data import load_dataset, load_images
from saganet.model import load_torchvision_weights
from saganet.model.backbone import ResNet, backbone_config
from saganet.preprocess import Preprocessing, channel_stats
from saganet.pretrain import read_card
from saganet.study import draw_split


@torch.no_grad()
def embed(backbone, prep, images, adapt_on=None):
    if adapt_on is not None:  # AdaBN: cumulative BN statistics over the training images
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        backbone.train()
        for im in adapt_on:
            backbone(prep.to_tensor(im))
    backbone.eval()
    return np.stack([backbone(prep.to_tensor(im)).mean(dim=(2, 3))[0].numpy() for im in images])


def probe(data, encoders, shots, repeats, log=print):
    samples, class_names = load_dataset(data)
    raw, samples, _ = load_images(samples, skip_bad=True, log=log)
    labels = np.array([class_names.index(s.label) for s in samples])
    patients = [s.patient for s in samples] if all(s.patient for s in samples) else None
    results = []
    for enc in encoders:
        card = read_card(enc)
        backbone = ResNet(backbone_config(card["backbone"] if card else "resnet-tiny"))
        load_torchvision_weights(backbone, enc)
        state = {k: v.clone() for k, v in backbone.state_dict().items()}
        for n in shots:
            cv, test = [], []
            for r in range(repeats):
                backbone.load_state_dict(state)
                tr, te = draw_split(labels, patients, n, r)
                mean, std = channel_stats([raw[i] for i in tr])
                prep = Preprocessing(mean=mean, std=std)
                x = embed(backbone, prep, raw, adapt_on=[raw[i] for i in tr])
                clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
                folds = StratifiedKFold(min(5, n), shuffle=True, random_state=r)
                cv.append(balanced_accuracy_score(labels[tr], cross_val_predict(clf, x[tr], labels[tr], cv=folds)))
                test.append(balanced_accuracy_score(labels[te], clf.fit(x[tr], labels[tr]).predict(x[te])))
            rec = {"encoder": str(enc), "shots": n, "cv_in_shots_mean": float(np.mean(cv)),
                   "test_mean": float(np.mean(test)), "test_std": float(np.std(test, ddof=1)) if repeats > 1 else 0.0,
                   "train_hours": card["train_hours"] if card else None, "tiles": card["tiles"] if card else None}
            results.append(rec)
            log(json.dumps(rec))
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data")
    ap.add_argument("encoders", nargs="+")
    ap.add_argument("--shots", type=int, nargs="+", default=[20])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    res = probe(a.data, a.encoders, a.shots, a.repeats)
    if a.out:
        open(a.out, "w").write(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
