"""Prediction on whole (prepared) images and the metrics every report carries."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, recall_score,
                             roc_auc_score)

from .atomic import atomic_write, atomic_write_text


@torch.inference_mode()
def predict(model, prep, images, masks, batch_size: int = 16, tta: bool = False) -> np.ndarray:
    """Class probabilities (N, K) for prepared uint8 images and their boolean masks.

    Images of equal size are batched together; each image is seen whole (no crops). With tta, the
    mean over the 8 flips and quarter turns of each image (test-time augmentation: H&E has no
    orientation, and training saw all eight).
    """
    if tta:
        views = [(k, f) for k in range(4) for f in (False, True)]
        return np.mean([predict(model, prep, [_dihedral(im, k, f) for im in images],
                                [_dihedral(m, k, f) for m in masks], batch_size) for k, f in views], axis=0)
    model.eval()
    probs = np.zeros((len(images), model.config.num_classes), dtype=np.float64)
    by_shape: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(im.shape, []).append(i)
    for idx in by_shape.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            x = prep.to_tensor(np.stack([images[i] for i in chunk]))
            m = torch.from_numpy(np.stack([masks[i] for i in chunk])).unsqueeze(1).float()
            probs[chunk] = model(x, m)["probs"].double().numpy()
    return probs


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k)
    return np.ascontiguousarray(a[:, ::-1] if flip else a)


def classification_metrics(y_true, probs, class_names) -> dict:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    k = len(class_names)
    y_pred = probs.argmax(1)
    labels = list(range(k))
    out = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class_recall": dict(zip(class_names, map(float, recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)))),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }
    present = np.unique(y_true)
    if len(present) == k:
        p = probs / np.clip(probs.sum(1, keepdims=True), 1e-12, None)
        out["auc_ovr"] = float(roc_auc_score(y_true, p, multi_class="ovr", labels=labels)) if k > 2 else float(roc_auc_score(y_true, p[:, 1]))
    else:
        out["auc_ovr"] = None  # undefined when a class is absent from the test set
    return out


def plot_confusion(metrics: dict, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(metrics["confusion_matrix"])
    names = metrics["class_names"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(names), 1.0 + 0.8 * len(names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title or f"balanced accuracy {metrics['balanced_accuracy']:.3f}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def eval_run(run_dir, data, out=None, skip_bad=False, exclude_train=False, mask_dir=None, log=print) -> dict:
    """The `saganet eval` command. exclude_train leaves out the images the run trained or validated on."""
    from .data import load_dataset, load_images, user_masks
    from .preprocess import prepare_images
    from .run import load_run

    model, config, prep = load_run(run_dir)
    class_names = config["class_names"]
    samples, data_classes = load_dataset(data)
    unknown = sorted(set(data_classes) - set(class_names))
    if unknown:
        raise ValueError(f"{data}: classes {unknown} are not among the model's classes {class_names}")
    if exclude_train:
        seen = json.loads((Path(run_dir) / "metrics.json").read_text())
        seen = {str(Path(p).resolve()) for p in seen.get("train_files", []) + seen.get("val_files", [])}
        samples = [s for s in samples if str(Path(s.path).resolve()) not in seen]
        if not samples:
            raise ValueError(f"{data}: every image was used in training; nothing left to evaluate")
        log(f"evaluating on {len(samples)} images the run did not train on")
    raw, samples, bad = load_images(samples, skip_bad=skip_bad, log=log)
    imgs, masks = prepare_images(raw, prep, user_masks(samples, raw, data, mask_dir) if mask_dir else None,
                                 names=[s.path for s in samples])
    y = np.array([class_names.index(s.label) for s in samples])
    metrics = classification_metrics(y, predict(model, prep, imgs, masks), class_names)
    metrics["skipped_files"] = bad
    out = Path(out) if out else Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    plot_confusion(metrics, out / "confusion.png")
    log(f"balanced accuracy {metrics['balanced_accuracy']:.3f}, accuracy {metrics['accuracy']:.3f}, "
        f"macro-F1 {metrics['macro_f1']:.3f}; wrote {out}/metrics.json and confusion.png")
    return metrics
