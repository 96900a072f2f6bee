"""Self-training on unlabelled images: a teacher trained on the labelled images calls every
unlabelled image whole; per called class, its most confident share becomes pseudo-labelled training
data for a student trained from scratch with the same settings (one round of teacher-student
self-training, as in Noisy Student: Xie et al., CVPR 2020; Shaw et al., 2020, use teacher-student
chains for histology).

Why beside FixMatch: in the study FixMatch's pseudo-labels came from 64 px crops, which a model
trained on 20 images per class calls far less reliably than whole images, and they drifted to two
of three lymphoma classes (MCL recall 0.16 on the first draw). Here a pseudo-label is the whole
image's call, after aligning the teacher's probabilities to the labelled class shares (without it,
the first draw's teacher under-called MCL and the student learnt that: 0.717 against 0.760), selected
per class so no class can crowd out another, and the student's noise
(random crops, stain jitter, dropout) is what Noisy Student relies on. The student gets the teacher's
training budget (the same number of crops, spread over more images), so the row costs one more
training run, not a longer one.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .evaluate import predict
from .train import fit

KEEP = 0.5  # share of the unlabelled images called as a class that join the training set, most confident first


def align_to_prior(probs: np.ndarray, prior: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Class probabilities reweighted so that their mean over the unlabelled images equals `prior`
    (distribution alignment, Berthelot et al., ReMixMatch 2020; the EM prior correction of Saerens et
    al. 2002). A teacher that under-calls a class on new images (MCL as CLL on the first lymphoma
    draw) otherwise hands that bias to the student through its pseudo-labels."""
    p = probs / np.clip(probs.sum(1, keepdims=True), 1e-12, None)
    w = np.ones(p.shape[1])
    for _ in range(iterations):
        q = p * w
        q /= np.clip(q.sum(1, keepdims=True), 1e-12, None)
        w *= prior / np.clip(q.mean(0), 1e-12, None)
    q = p * w
    return q / np.clip(q.sum(1, keepdims=True), 1e-12, None)


def pseudo_label_images(teacher, prep, images, masks, keep: float = KEEP,
                        prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (chosen indices into images, their pseudo-labels, the teacher's confidence for them).
    With `prior` (class shares expected among the unlabelled images: the labelled images' shares),
    the teacher's probabilities are aligned to it first. Per called class, the `keep` most
    confident images (at least one) are chosen."""
    if not 0 < keep <= 1:
        raise ValueError(f"self-training keep share must be in (0, 1], got {keep}")
    probs = predict(teacher, prep, images, masks)
    if prior is not None:
        probs = align_to_prior(probs, np.asarray(prior, dtype=np.float64))
    called, conf = probs.argmax(1), probs.max(1)
    chosen = []
    for c in np.unique(called):
        idx = np.flatnonzero(called == c)
        order = idx[np.argsort(-conf[idx], kind="stable")]
        chosen.extend(order[:max(1, int(round(keep * len(idx))))].tolist())
    chosen = np.array(sorted(chosen), dtype=int)
    return chosen, called[chosen], conf[chosen]


def self_train(images, masks, labels, class_names, cfg, prep, unlabelled, teacher=None, keep: float = KEEP,
               log=print, **fit_kwargs):
    """Teacher (given, or trained on the labelled images with cfg), then the student, same cfg, on
    labelled + pseudo-labelled images. The teacher's calls are aligned to the labelled images' class
    shares (the study's pool is stratified like them; a lab's archive of the same tumour types is
    assumed to be roughly so). Returns (student, history, info): what was pseudo-labelled."""
    cfg = replace(cfg, semi="")  # teacher and student are trained on labels (real or pseudo) only
    if teacher is None:
        teacher, _ = fit(images, masks, labels, class_names, cfg, prep, log=log, **fit_kwargs)
    u_images, u_masks = unlabelled
    labels = np.asarray(labels)
    prior = np.bincount(labels, minlength=len(class_names)) / len(labels)
    chosen, pseudo, conf = pseudo_label_images(teacher, prep, u_images, u_masks, keep, prior=prior)
    log(f"self-training: {len(chosen)} of {len(u_images)} unlabelled images pseudo-labelled "
        f"({', '.join(f'{class_names[c]} {int((pseudo == c).sum())}' for c in range(len(class_names)))})")
    # The same training budget as the teacher: as many crops in all, spread over more images.
    n = len(labels)
    student_cfg = replace(cfg, crops_per_image=max(1, round(cfg.crops_per_image * n / (n + len(chosen)))))
    student, history = fit(list(images) + [u_images[i] for i in chosen], list(masks) + [u_masks[i] for i in chosen],
                           np.concatenate([np.asarray(labels), pseudo]), class_names, student_cfg, prep, log=log,
                           **fit_kwargs)
    info = {"pseudo_labelled": int(len(chosen)), "unlabelled": len(u_images),
            "per_class": {class_names[c]: int((pseudo == c).sum()) for c in range(len(class_names))},
            "mean_confidence": float(conf.mean()) if len(conf) else None}
    return student, history, info
