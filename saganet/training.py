"""What supervised training (train.py) and pretraining (pretrain.py) share: the learning-rate
schedule, the random streams, and checkpoints that resume only under the settings that wrote them.

Every random draw derives from (seed, stream) or (seed, epoch[, stream]), so a resumed run replays
exactly the run it continues. The streams are named here so that no two collide.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .atomic import atomic_write

# numpy streams (np.random.default_rng([seed, STREAM])) of draws made once per run
STREAM_TILE_BANK = 5  # pretraining: which candidate tiles enter the bank
STREAM_VALIDATION = 7  # training: the held-out validation images
STREAM_SHOTS = 11  # training: the --shots images per class
STREAM_UNLABELLED = 17  # training, per epoch: crops of unlabelled images (the labelled stream stays as without them)
EPOCH_SEED_STRIDE = 100003  # torch seed of an epoch: seed * stride + epoch (prime: distinct for epoch < stride)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """The torch seed of one epoch's draws in `stream` (0: the labelled crops, augmentations, views)."""
    return seed * EPOCH_SEED_STRIDE + (epoch if stream == 0 else epoch * 7 + stream)


def warmup_cosine(opt: torch.optim.Optimizer, warm: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warm` steps, then cosine to zero at `total`.

    Closed form through LambdaLR rather than LinearLR + CosineAnnealingLR, which compute the cosine
    recursively: their rates differ in the last bits, and the recorded studies would no longer replay."""
    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def load_checkpoint(path, fingerprint: dict, ignore: tuple = ()) -> dict | None:
    """The state saved at `path`, or None if there is none. A checkpoint written under another
    fingerprint (settings, data) is refused: resuming it would silently mix two runs. Top-level keys in
    `ignore` are left out of the recorded fingerprint (settings that do not change what is trained and
    that older checkpoints recorded)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read checkpoint ({e}); delete it to start over") from None
    recorded = state.get("fingerprint", state.get("settings"))  # "settings": training checkpoints before 0.1.0's last
    recorded = None if recorded is None else {k: v for k, v in json.loads(recorded).items() if k not in ignore}
    if recorded is None or recorded != json.loads(json.dumps(fingerprint)):
        raise ValueError(f"{path} was written with other settings or data; use a new output, or the same settings "
                         f"to resume")
    return state


def save_checkpoint(path, state: dict, fingerprint: dict) -> None:
    state = dict(state, fingerprint=json.dumps(fingerprint, sort_keys=True))
    atomic_write(path, lambda p: torch.save(state, p))


def progress_bar(progress: bool, total: int, initial: int, desc: str, unit: str):
    """A tqdm bar, or None when progress is off (logs and tests)."""
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False)
