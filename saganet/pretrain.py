"""Self-supervised pretraining of the backbone on unlabelled images and slides.

Tiles come from tissue only: slides through a thumbnail tissue mask, images through random crops
kept when at least half is tissue. Two views of each tile pass through pathology augmentations
(random resized crop over a 2x zoom range, 90-degree rotations and flips, HED stain jitter,
brightness/contrast, Gaussian blur), done in torch on whole batches because per-tile numpy would
cost more than the network on 2 cores. Methods: SimCLR (NT-Xent) and BYOL (EMA target,
predictor); docs/results.md records which one won and why it is the default.

Output: ENCODER (.safetensors, the backbone in torchvision layout, loadable by
`saganet train --pretrained`) and ENCODER's card (.json: sources, tile counts, method, hours).
Training resumes from ENCODER.ckpt and replays exactly: every epoch's randomness derives from
(seed, epoch).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .atomic import atomic_write
from .augment import brightness_contrast, hed_jitter_torch, random_blur
from .config import PRETRAIN_METHODS, MaskConfig, PretrainConfig
from .data import IMAGE_EXTENSIONS, load_image
from .model.backbone import ResNet, backbone_config
from .preprocess import Preprocessing, channel_stats
from .slide.reader import OpenSlideReader, is_slide, thumbnail_tissue
from .slide.tiler import tile_grid
from .tissue import mask_components
from .training import STREAM_TILE_BANK, epoch_seed, load_checkpoint, progress_bar, save_checkpoint, warmup_cosine

CARD_FORMAT = "saganet-encoder"
CARD_VERSION = 1



# ---------------------------------------------------------------- sources and the tile bank

def find_sources(sources) -> list[tuple[str, str, str]]:
    """(path, "image" | "slide", source argument) for each file, and every image/slide under each folder."""
    out = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            files = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS or is_slide(f)]
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
        out.extend((str(f), "slide" if is_slide(f) else "image", str(s)) for f in files)
    if not out:
        raise ValueError(f"no images or slides found in {list(map(str, sources))}")
    return out


def _tissue_fraction(rgb: np.ndarray) -> float:
    return float(mask_components(rgb, MaskConfig(focus_min=0.0, cell_density_min=-1.0, min_region=0))["tissue"].mean())


def build_tile_bank(sources, cfg: PretrainConfig, log=print, skip_bad: bool = True):
    """uint8 (N, T, T, 3) tissue tiles, per-source records and skipped files (path, reason).
    skip_bad=False: the first unreadable file raises ValueError naming it.

    Candidates are enumerated first (image crops at random positions, slide grid tiles on tissue)
    and, past max_tiles, subsampled uniformly, so that only kept tiles are read.
    """
    rng = np.random.default_rng([cfg.seed, STREAM_TILE_BANK])
    t = cfg.tile_size
    candidates, records, skipped = [], [], []
    for path, kind, source in find_sources(sources):
        try:
            if kind == "slide":
                with OpenSlideReader(path) as reader:  # the prediction's reader and tile grid
                    tissue = thumbnail_tissue(reader.thumbnail())
                    n0 = len(candidates)
                    for ds in cfg.slide_downsamples:  # tiles of t * ds level-0 px, shrunk to t
                        grid = tile_grid(reader.dimensions, 1.0, float(ds), t, tissue, min_tissue=0.5)
                        candidates += [(len(records), "slide", path, (*grid.origin(i), ds)) for i in range(len(grid.cells))]
                    records.append({"path": path, "kind": kind, "source": source, "candidates": len(candidates) - n0})
            else:
                h, w = load_image(path).shape[:2]
                k = max(1, round(h * w / (t * t)))  # cover the image about once
                pos = [(int(rng.integers(0, max(1, h - t + 1))), int(rng.integers(0, max(1, w - t + 1)))) for _ in range(k)]
                candidates += [(len(records), "image", path, yx) for yx in pos]
                records.append({"path": path, "kind": kind, "source": source, "candidates": k})
        except (ValueError, OSError) as e:  # ImageLoadError, SlideError, unreadable file
            if not skip_bad:
                raise ValueError(f"unlabelled source {e}") from None
            skipped.append({"path": path, "source": source, "error": str(e)})
            log(f"skipped {e}")
    if len(candidates) > cfg.max_tiles:
        keep = np.sort(rng.choice(len(candidates), size=cfg.max_tiles, replace=False))
        candidates = [candidates[i] for i in keep]
    tiles, kept = [], np.zeros(len(records), int)
    cache_path, cache_img, handles = None, None, {}
    try:
        for rec_i, kind, path, where in candidates:
            if any(s["path"] == path for s in skipped):
                continue
            try:
                if kind == "slide":
                    x, y, ds = where
                    if path not in handles:
                        handles[path] = OpenSlideReader(path)
                    tile = handles[path].read(x, y, t * ds, t)
                else:
                    if path != cache_path:
                        cache_path, cache_img = path, load_image(path)
                    y0, x0 = where
                    tile = cache_img[y0:y0 + t, x0:x0 + t]
                    if tile.shape[:2] != (t, t):  # image smaller than a tile: reflect-pad
                        tile = np.pad(tile, ((0, t - tile.shape[0]), (0, t - tile.shape[1]), (0, 0)), mode="reflect")
            except (ValueError, OSError) as e:
                if not skip_bad:
                    raise ValueError(f"unlabelled source {e}") from None
                skipped.append({"path": path, "source": records[rec_i]["source"], "error": str(e)})
                log(f"skipped {e}")
                continue
            if _tissue_fraction(tile) >= 0.5:
                tiles.append(tile)
                kept[rec_i] += 1
    finally:
        for h in handles.values():
            h.close()
    for r, k in zip(records, kept):
        r["tiles"] = int(k)
    if not tiles:
        raise ValueError("no tissue tiles found in the sources (all glass, too small, or unreadable)")
    return np.stack(tiles), records, skipped


# ---------------------------------------------------------------- augmentations (batched, torch)

def augment(tiles: torch.Tensor, cfg: PretrainConfig, gen: torch.Generator, mean, std) -> torch.Tensor:
    """uint8 tiles (B,T,T,3) -> one normalised random view each, (B,3,crop,crop)."""
    b = tiles.shape[0]
    x = tiles.permute(0, 3, 1, 2).float().div_(255.0)
    # Random resized crop, rotation by k*90 degrees and flip as one affine map per sample.
    side = cfg.min_scale + (1 - cfg.min_scale) * torch.rand(b, generator=gen)
    aspect = torch.exp((torch.rand(b, generator=gen) - 0.5) * 0.4)  # about 0.8-1.2
    sx, sy = (side * aspect.sqrt()).clamp(max=1), (side / aspect.sqrt()).clamp(max=1)
    tx = (1 - sx) * (2 * torch.rand(b, generator=gen) - 1)
    ty = (1 - sy) * (2 * torch.rand(b, generator=gen) - 1)
    k = torch.randint(0, 4, (b,), generator=gen).float() * (math.pi / 2)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(k), torch.sin(k)
    theta = torch.stack([torch.stack([sx * cos * flip, -sy * sin, tx], 1),
                         torch.stack([sx * sin * flip, sy * cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (b, 3, cfg.crop, cfg.crop), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.hed_sigma > 0:
        x = hed_jitter_torch(x, gen, cfg.hed_sigma)
    x = brightness_contrast(x, gen)
    if cfg.blur_p > 0:
        x = random_blur(x, gen, cfg.blur_p)
    return Preprocessing(mean=mean, std=std).normalise(x)


# ---------------------------------------------------------------- methods

def _mlp(cin: int, hidden: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class SelfSupervised(nn.Module):
    """Backbone + projector (+ predictor and EMA target for BYOL)."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        if cfg.method not in PRETRAIN_METHODS:
            raise ValueError(f"unknown pretraining method {cfg.method!r}; choose one of {PRETRAIN_METHODS}")
        self.method, self.temperature = cfg.method, cfg.temperature
        self.backbone = ResNet(backbone_config(cfg.backbone))
        c = self.backbone.out_channels
        self.projector = _mlp(c, 512, 128)
        if cfg.method == "byol":
            self.predictor = _mlp(128, 512, 128)
            self.target = nn.ModuleDict({"backbone": copy.deepcopy(self.backbone), "projector": copy.deepcopy(self.projector)})
            self.target.requires_grad_(False)

    def embed(self, x, backbone, projector):
        return projector(backbone(x).mean(dim=(2, 3)))

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        if self.method == "simclr":
            z = F.normalize(self.embed(torch.cat([v1, v2]), self.backbone, self.projector), dim=1)
            n = v1.shape[0]
            sim = z @ z.t() / self.temperature
            sim.fill_diagonal_(float("-inf"))
            target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
            return F.cross_entropy(sim, target)
        p = F.normalize(self.predictor(self.embed(torch.cat([v1, v2]), self.backbone, self.projector)), dim=1)
        with torch.no_grad():
            t = F.normalize(self.embed(torch.cat([v2, v1]), self.target["backbone"], self.target["projector"]), dim=1)
        return (2 - 2 * (p * t).sum(1)).mean()

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        if self.method != "byol":
            return
        for src, dst in ((self.backbone, self.target["backbone"]), (self.projector, self.target["projector"])):
            for a, b in zip(src.parameters(), dst.parameters()):
                b.mul_(momentum).add_(a.detach(), alpha=1 - momentum)
            for a, b in zip(src.buffers(), dst.buffers()):
                b.copy_(a)


# ---------------------------------------------------------------- training

def card_path(encoder) -> Path:
    return Path(encoder).with_suffix(".json")


def read_card(encoder) -> dict | None:
    """The JSON card beside an encoder file, or None for weights that did not come from pretrain."""
    p = card_path(encoder)
    if not p.is_file():
        return None
    try:
        card = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    return card if isinstance(card, dict) and card.get("format") == CARD_FORMAT else None


def summarise_sources(sources, records, skipped) -> list[dict]:
    """Per SOURCE argument: images, slides, tiles kept, files skipped (the card's short account)."""
    out = []
    for src in map(str, sources):
        rs = [r for r in records if r["source"] == src]
        out.append({"source": src, "images": sum(r["kind"] == "image" for r in rs),
                    "slides": sum(r["kind"] == "slide" for r in rs), "tiles": sum(r.get("tiles", 0) for r in rs),
                    "skipped": len({s["path"] for s in skipped if s["source"] == src})})
    return out


def save_encoder(path: Path, backbone: ResNet) -> None:
    atomic_write(path, lambda p: save_file({k: v.detach().contiguous() for k, v in backbone.state_dict().items()}, str(p)))


def pretrain(sources, out, cfg: PretrainConfig, snapshot_every: int = 0, log=print, progress: bool = True) -> dict:
    """Pretrain and write OUT (.safetensors) and its card; resumes from OUT.ckpt. Returns the card."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: the encoder file must end in .safetensors")
    if cfg.crop > cfg.tile_size:
        raise ValueError(f"crop {cfg.crop} is larger than the tile size {cfg.tile_size}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_bank = time.time()
    bank, records, skipped = build_tile_bank(sources, cfg, log=log)
    n = len(bank)
    if n < 4:  # contrastive batches need a few tiles to tell apart
        raise ValueError(f"only {n} tissue tiles: too few to pretrain (need at least 4)")
    batch = min(cfg.batch_size, n)
    mean, std = channel_stats(bank)  # streamed: a float64 copy of the bank would be ~8 GB at the defaults
    log(f"tile bank: {n} tiles of {cfg.tile_size} px from {len(records)} sources "
        f"({len(skipped)} skipped) in {time.time() - t_bank:.0f}s")

    torch.manual_seed(cfg.seed)
    model = SelfSupervised(cfg)
    params = [p for name, p in model.named_parameters() if not name.startswith("target.")]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = n // batch  # per epoch
    if cfg.steps:
        cfg = replace(cfg, epochs=max(cfg.warmup_epochs + 1, math.ceil(cfg.steps / steps)))
    sched = warmup_cosine(opt, steps * cfg.warmup_epochs, steps * cfg.epochs)
    settings = {k: v for k, v in cfg.to_dict().items() if k != "threads"}  # threads change speed, not results
    fingerprint = {"settings": settings, "tiles": n, "sources": [r["path"] for r in records],
                   "bank_checksum": int(bank[:, ::8, ::8].astype(np.int64).sum())}
    ckpt = Path(str(out) + ".ckpt")
    start, history, seconds = 0, [], 0.0
    state = load_checkpoint(ckpt, fingerprint)
    if state is not None:
        for part, obj in (("model", model), ("optimizer", opt), ("scheduler", sched)):
            obj.load_state_dict(state[part])
        start, history, seconds = int(state["epoch"]), json.loads(state["history"]), float(state["seconds"])
        log(f"resumed from {ckpt} after epoch {start}")

    bar = progress_bar(progress, steps * cfg.epochs, start * steps, f"pretrain {cfg.method}", "step")
    bank_t = torch.from_numpy(bank)
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        loss = _pretrain_epoch(model, opt, sched, bank_t, cfg, epoch, steps, batch, (mean, std), bar)
        seconds += time.time() - t0
        rec = {"epoch": epoch + 1, "loss": loss, "seconds": round(time.time() - t0, 1), "tiles_seen": (epoch + 1) * steps * batch}
        history.append(rec)
        if snapshot_every and (epoch + 1) % snapshot_every == 0 and epoch + 1 < cfg.epochs:
            save_encoder(out.with_name(f"{out.stem}-epoch{epoch + 1:03d}.safetensors"), model.backbone)
        save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                               "epoch": epoch + 1, "history": json.dumps(history), "seconds": seconds}, fingerprint)
        log(json.dumps(rec))  # after the checkpoint: a logged epoch is a saved epoch
    if bar is not None:
        bar.close()

    save_encoder(out, model.backbone)
    card = {"format": CARD_FORMAT, "format_version": CARD_VERSION, "method": cfg.method, "backbone": cfg.backbone,
            "backbone_config": backbone_config(cfg.backbone).to_dict(), "config": cfg.to_dict(),
            "inputs": summarise_sources(sources, records, skipped), "sources": records, "skipped": skipped, "tiles": n,
            "views_seen": 2 * steps * batch * cfg.epochs, "batch_size": batch, "steps": steps * cfg.epochs,
            "train_seconds": round(seconds, 1), "train_hours": round(seconds / 3600, 4),
            "normalisation": {"mean": mean, "std": std}, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "history": history}
    atomic_write(card_path(out), lambda p: p.write_text(json.dumps(card, indent=2)))
    log(f"wrote {out} and {card_path(out)} ({seconds / 60:.1f} min of training)")
    return card


def _pretrain_epoch(model, opt, sched, bank: torch.Tensor, cfg: PretrainConfig, epoch: int, steps: int, batch: int,
                    stats, bar) -> float:
    """One pass over the bank in a random order, two augmented views per tile; the mean loss. Its
    randomness derives from (seed, epoch): a resumed run replays it exactly."""
    rng = np.random.default_rng([cfg.seed, epoch])
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
    order = torch.from_numpy(rng.permutation(len(bank)))
    model.train()
    total, loss_sum = steps * cfg.epochs, 0.0
    for s in range(steps):
        tiles = bank[order[s * batch:(s + 1) * batch]]
        loss = model.loss(augment(tiles, cfg, gen, *stats), augment(tiles, cfg, gen, *stats))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step = epoch * steps + s + 1
        model.update_target(1 - (1 - cfg.ema) * (math.cos(math.pi * step / total) + 1) / 2)  # BYOL's EMA schedule
        loss_sum += loss.item()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / (s + 1):.3f}")
    return loss_sum / steps
