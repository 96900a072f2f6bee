"""Training: class-balanced random crops at native resolution, fixed schedule or early stopping,
deterministic with a seed, resumable from the last finished epoch."""
from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import semi
from .augment import random_crop
from .config import SEMI_METHODS, TrainConfig
from .data import load_dataset, load_images, user_masks
from .evaluate import classification_metrics, predict
from .model import SagaNet, load_torchvision_weights, saganet_loss, variant_config
from .preprocess import Preprocessing, channel_stats, prepare_images
from .run import save_run
from .select import resolve_variant
from .stain import hed_jitter, reinhard_target
from .training import (STREAM_SHOTS, STREAM_UNLABELLED, STREAM_VALIDATION, epoch_seed, load_checkpoint, progress_bar,
                       save_checkpoint, warmup_cosine)



def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _random_crop_batch(images, masks, labels, idx, crop, rng, hed_sigma):
    """Random crop (reflect-padded if the image is smaller), flips, 90-degree rotations, HED jitter."""
    xs, ms = [], []
    for i in idx:
        c, cm = random_crop(images[i], masks[i], crop, rng)
        if hed_sigma > 0:
            c = hed_jitter(c, rng, sigma=hed_sigma)
        xs.append(c)
        ms.append(cm)
    return np.stack(xs), np.stack(ms), torch.as_tensor(labels[idx], dtype=torch.long)


def balanced_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices drawn with equal probability per class (uniform within a class)."""
    classes, counts = np.unique(labels, return_counts=True)
    p = np.zeros(len(labels))
    for c, k in zip(classes, counts):
        p[labels == c] = 1.0 / (len(classes) * k)
    return rng.choice(len(labels), size=n, replace=True, p=p / p.sum())



# Settings of `--variant auto`'s choice (select.py). fit trains the chosen variant, so they change
# nothing it trains; left out of the checkpoint's fingerprint, a checkpoint written before they
# existed or changed still resumes.
SELECTION_FIELDS = ("auto_candidates", "auto_folds", "auto_se")


def training_fingerprint(cfg: TrainConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in SELECTION_FIELDS}


def fit(images, masks, labels, class_names, cfg: TrainConfig, prep: Preprocessing, val=None,
        checkpoint: Path | None = None, log=print, progress: bool = True, unlabelled=None):
    """Train a model on prepared (uint8, scaled) images with boolean masks.

    val: optional (images, masks, labels) for early stopping on balanced accuracy.
    unlabelled: optional (images, masks) without labels, used by cfg.semi.
    checkpoint: file to save after every epoch and to resume from if present.
    Returns (model, history).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    labels = np.asarray(labels)
    _check_semi(cfg, unlabelled)
    model = build_model(cfg, len(class_names), log)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, math.ceil(len(labels) * cfg.crops_per_image / cfg.batch_size))  # per epoch
    sched = warmup_cosine(opt, steps * cfg.warmup_epochs, steps * cfg.epochs)
    run = _Progress(cfg.patience)
    fingerprint = training_fingerprint(cfg)
    state = load_checkpoint(checkpoint, fingerprint, ignore=SELECTION_FIELDS) if checkpoint is not None else None
    if state is not None:
        for part, obj in (("model", model), ("optimizer", opt), ("scheduler", sched)):
            obj.load_state_dict(state[part])
        run.restore(state)
        log(f"resumed from {checkpoint} after epoch {run.epoch}")
    bar = progress_bar(progress, cfg.epochs, run.epoch, f"train {cfg.variant}", "epoch")
    while run.epoch < cfg.epochs and not run.stopped:
        t0 = time.time()
        means = _train_epoch(model, opt, sched, images, masks, labels, prep, cfg, run.epoch, steps, unlabelled)
        rec = {"epoch": run.epoch + 1, "seconds": round(time.time() - t0, 2), "lr": sched.get_last_lr()[0], **means}
        if val is not None:
            rec["val_balanced_accuracy"] = classification_metrics(val[2], predict(model, prep, val[0], val[1]),
                                                                  class_names)["balanced_accuracy"]
        run.record(rec, model)
        log(json.dumps(rec))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}")
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                         "scheduler": sched.state_dict(), **run.state()}, fingerprint)
        if run.stopped:
            log(f"early stop after epoch {run.epoch}: best validation balanced accuracy {run.best['score']:.3f} "
                f"at epoch {run.best['epoch']}")
    if bar is not None:
        bar.close()
    if run.best is not None:
        model.load_state_dict(run.best["model"])
    return model.eval(), run.history


def _check_semi(cfg: TrainConfig, unlabelled) -> None:
    if cfg.semi and cfg.semi not in semi.METHODS:
        raise ValueError(f"unknown semi-supervised method {cfg.semi!r}; choose from {semi.METHODS}")
    if bool(cfg.semi) != (unlabelled is not None and len(unlabelled[0]) > 0):
        raise ValueError("semi-supervised training needs unlabelled images, and unlabelled images need a method (--semi)")


def build_model(cfg: TrainConfig, num_classes: int, log=print) -> SagaNet:
    """The variant's network, seeded, from scratch or on pretrained backbone weights."""
    mcfg = variant_config(cfg.variant, num_classes=num_classes, backbone=cfg.backbone, **cfg.model_overrides)
    _seed_everything(cfg.seed)
    model = SagaNet(mcfg)
    if cfg.pretrained:
        load_backbone(model, cfg, log)
    elif cfg.freeze_backbone:
        raise ValueError("freezing the backbone needs pretrained weights (--pretrained)")
    if cfg.freeze_backbone:
        # Frozen weights, but BN layers stay in training mode: their running statistics move to
        # the labelled images' domain (AdaBN), which costs nothing and the pool's stains differ.
        model.backbone.requires_grad_(False)
    return model


def _train_epoch(model, opt, sched, images, masks, labels, prep, cfg: TrainConfig, epoch: int, steps: int,
                 unlabelled) -> dict:
    """One epoch of class-balanced random crops (plus unlabelled crops with cfg.semi); mean losses.
    Its randomness derives from (seed, epoch): a resumed run replays it exactly."""
    rng = np.random.default_rng([cfg.seed, epoch])
    torch.manual_seed(epoch_seed(cfg.seed, epoch))
    model.train()
    order = balanced_indices(labels, steps * cfg.batch_size, rng)
    sums = {"loss": 0.0, "class_loss": 0.0, "agreement_loss": 0.0}
    if cfg.semi:
        # A separate stream: the labelled crops stay those of the labelled-only run.
        rng_u = np.random.default_rng([cfg.seed, epoch, STREAM_UNLABELLED])
        gen_u = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, STREAM_UNLABELLED))
        sums.update(unlabelled_loss=0.0, confident=0.0)
    head, loss_cfg = model.config.head, model.config.loss
    for s in range(steps):
        idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        x, m, y = _random_crop_batch(images, masks, labels, idx, cfg.crop, rng, cfg.hed_sigma)
        losses = saganet_loss(model(prep.to_tensor(x), torch.from_numpy(m).unsqueeze(1).float()), y, loss_cfg)
        if cfg.semi:
            u_idx = rng_u.integers(0, len(unlabelled[0]), cfg.unlabelled_ratio * len(idx))
            u = semi.fixmatch_loss(model, prep, unlabelled[0], unlabelled[1], u_idx, cfg.crop, rng_u, gen_u, loss_cfg,
                                   cfg.pseudo_threshold or semi.DEFAULT_THRESHOLD[head], cfg.strong_hed_sigma)
            losses["loss"] = losses["loss"] + cfg.unlabelled_weight * u["loss"]
            losses.update(unlabelled_loss=u["loss"], confident=u["confident"])
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        sched.step()
        for k in sums:
            sums[k] += float(losses[k].detach())
    return {k: v / steps for k, v in sums.items()}


class _Progress:
    """Epochs done, their records, and early stopping on validation balanced accuracy."""

    def __init__(self, patience: int):
        self.patience, self.patience_left = patience, patience
        self.epoch, self.history, self.best, self.stopped = 0, [], None, False

    def record(self, rec: dict, model) -> None:
        self.epoch, self.history = rec["epoch"], self.history + [rec]
        score = rec.get("val_balanced_accuracy")
        if score is None:
            return
        if self.best is None or score > self.best["score"]:
            self.best = {"score": score, "epoch": rec["epoch"], "model": {k: v.clone() for k, v in model.state_dict().items()}}
            self.patience_left = self.patience
        else:
            self.patience_left -= 1
        self.stopped = self.patience_left <= 0

    def state(self) -> dict:
        out = {"epoch": self.epoch, "history": json.dumps(self.history), "patience_left": self.patience_left,
               "stopped": self.stopped}
        return out | ({"best": self.best} if self.best is not None else {})

    def restore(self, state: dict) -> None:
        self.epoch, self.history = int(state["epoch"]), json.loads(state["history"])
        self.best, self.patience_left, self.stopped = state.get("best"), int(state["patience_left"]), bool(state["stopped"])


def pretrain_on(sources, encoder: Path, cfg: TrainConfig, steps: int = 150, log=print) -> Path:
    """In-domain self-supervised pretraining (SimCLR, `saganet pretrain`'s defaults) on unlabelled
    sources, for about `steps` steps; resumable, and skipped when the encoder is already there."""
    from .config import PretrainConfig
    from .pretrain import pretrain

    encoder = Path(encoder)
    if not encoder.is_file():
        pretrain(sources, encoder, PretrainConfig(backbone=cfg.backbone, steps=steps, seed=cfg.seed, threads=cfg.threads),
                 log=log, progress=False)
    return encoder


def load_backbone(model: SagaNet, cfg: TrainConfig, log=print) -> None:
    """Load cfg.pretrained into the backbone; a pretrain card beside it must name the same backbone."""
    from .pretrain import read_card

    card = read_card(cfg.pretrained)
    if card is not None and card.get("backbone") != cfg.backbone:
        raise ValueError(f"{cfg.pretrained} was pretrained as backbone {card.get('backbone')!r}; "
                         f"train with --backbone {card.get('backbone')}")
    ignored = load_torchvision_weights(model.backbone, cfg.pretrained)
    what = f"{card['method']} encoder, {card['tiles']} tiles, {card['train_hours']} h" if card else "no pretrain card"
    log(f"loaded backbone weights from {cfg.pretrained} ({what}; {len(ignored)} keys ignored)")


def make_preprocessing(train_images_raw, cfg: TrainConfig) -> Preprocessing:
    """Preprocessing fitted on training images only: stain target and channel statistics."""
    base = Preprocessing(scale=cfg.scale, mask=cfg.mask)
    scaled = [base.image(im) for im in train_images_raw]
    target = reinhard_target(scaled) if cfg.stain_norm else None
    if target is not None:
        base = replace(base, stain_target=target)
        scaled = [base.image(im) for im in train_images_raw]
    mean, std = channel_stats(scaled)
    return replace(base, mean=mean, std=std)


def split_validation(labels, fraction: float, seed: int):
    """Stratified hold-out of `fraction` of the training images (at least one per class)."""
    rng = np.random.default_rng([seed, STREAM_VALIDATION])
    labels = np.asarray(labels)
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx))))
        if k >= len(idx):
            raise ValueError(f"class {c!r} has {len(idx)} training image(s): too few to hold out {k} for validation")
        val.extend(rng.choice(idx, size=k, replace=False).tolist())
    val = np.array(sorted(val))
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def train_run(data, out, cfg: TrainConfig, shots: int | None = None, mask_dir=None, skip_bad=False,
              unlabelled=(), pretrain_unlabelled: bool = False, log=print) -> dict:
    """The `saganet train` command: DATA -> RUN directory. Returns the metrics dict.

    unlabelled: images, slides or folders without labels; with cfg.semi they join training, and with
    pretrain_unlabelled the backbone is first pretrained on them (RUN/encoder.safetensors)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train.log", "a")

    def both(msg):
        log(msg)
        logf.write(msg + "\n")
        logf.flush()

    try:
        samples, class_names = load_dataset(data)
        if shots:
            rng = np.random.default_rng([cfg.seed, STREAM_SHOTS])
            picked = []
            for c in class_names:
                idx = [i for i, s in enumerate(samples) if s.label == c]
                if len(idx) < shots:
                    raise ValueError(f"class {c!r} has {len(idx)} images, fewer than --shots {shots}")
                picked.extend(rng.choice(idx, size=shots, replace=False).tolist())
            samples = [samples[i] for i in sorted(picked)]
        raw, samples, bad = load_images(samples, skip_bad=skip_bad, log=both)
        given = user_masks(samples, raw, data, mask_dir) if mask_dir else None
        labels = np.array([class_names.index(s.label) for s in samples])
        tr, va = (split_validation(labels, cfg.val_fraction, cfg.seed) if cfg.val_fraction > 0
                  else (np.arange(len(labels)), np.array([], dtype=int)))
        prep = make_preprocessing([raw[i] for i in tr], cfg)
        imgs, masks = prepare_images(raw, prep, given, names=[s.path for s in samples])
        pool, pool_skipped = None, []
        if unlabelled:
            from .unlabelled import load_unlabelled

            pool_raw, pool_skipped = load_unlabelled(unlabelled, skip_bad=skip_bad, log=both)
            pool = prepare_images(pool_raw, prep)
            both(f"{len(pool_raw)} unlabelled images or slide tiles ({len(pool_skipped)} sources skipped)")
            if pretrain_unlabelled:
                cfg = replace(cfg, pretrained=str(pretrain_on(unlabelled, out / "encoder.safetensors", cfg, log=both)))
            if cfg.semi not in SEMI_METHODS:
                raise ValueError(f"--semi {cfg.semi!r}: choose from {SEMI_METHODS}")
        elif cfg.semi or pretrain_unlabelled:
            raise ValueError("--semi and --pretrain-unlabelled need unlabelled sources (--unlabelled PATH...)")
        cfg, selection = resolve_variant([imgs[i] for i in tr], [masks[i] for i in tr], labels[tr], class_names, cfg,
                                         prep, log=both)
        both(f"training {cfg.variant} on {len(tr)} images ({len(va)} held out for validation), classes {class_names}")
        val = ([imgs[i] for i in va], [masks[i] for i in va], labels[va]) if len(va) else None
        t0 = time.time()
        semi_info = None
        if cfg.semi == "selftrain":
            from .selftrain import self_train

            teacher, _ = fit([imgs[i] for i in tr], [masks[i] for i in tr], labels[tr], class_names,
                             replace(cfg, semi=""), prep, val=val, checkpoint=out / "teacher.pt", log=both)
            model, history, semi_info = self_train([imgs[i] for i in tr], [masks[i] for i in tr], labels[tr], class_names,
                                                   cfg, prep, pool, teacher=teacher, val=val,
                                                   checkpoint=out / "checkpoint.pt", log=both)
        else:
            model, history = fit([imgs[i] for i in tr], [masks[i] for i in tr], labels[tr], class_names, cfg, prep,
                                 val=val, checkpoint=out / "checkpoint.pt", log=both, unlabelled=pool if cfg.semi else None)
        metrics = {"train_seconds": round(time.time() - t0, 1), "history": history, "train_images": len(tr),
                   "val_images": len(va), "skipped_files": bad, "unlabelled_images": len(pool[0]) if pool else 0,
                   "skipped_unlabelled": pool_skipped, "self_training": semi_info, "variant_selection": selection,
                   "train_files": [samples[i].path for i in tr], "val_files": [samples[i].path for i in va]}
        save_run(out, model, class_names, prep, cfg, metrics)
        both(f"wrote {out}/weights.safetensors, config.json, metrics.json")
        return metrics
    finally:
        logf.close()
