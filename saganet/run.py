"""A training run's folder: weights.safetensors, config.json (model, class names, preprocessing,
training settings) and metrics.json. Written by training, read by export and evaluation; kept apart
from training code so that the inference side (bundle export) never imports it."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from .atomic import atomic_write, atomic_write_text
from .config import ModelConfig
from .model.saganet import SagaNet
from .preprocess import Preprocessing

FORMAT_VERSION = 1


def save_run(run_dir: Path, model: SagaNet, class_names, prep: Preprocessing, cfg, metrics: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "weights.safetensors",
                 lambda p: save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p)))
    config = {"format_version": FORMAT_VERSION, "class_names": list(class_names), "model": model.config.to_dict(),
              "preprocessing": prep.to_dict(), "train": cfg.to_dict()}
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))


def load_run(run_dir) -> tuple[SagaNet, dict, Preprocessing]:
    run_dir = Path(run_dir)
    cfg_path, w_path = run_dir / "config.json", run_dir / "weights.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; is {run_dir} a finished training run?")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: format_version {config.get('format_version')!r}, this saganet reads {FORMAT_VERSION}")
    model = SagaNet(ModelConfig.from_dict(config["model"]))
    model.load_state_dict(load_file(str(w_path)))
    model.eval()
    return model, config, Preprocessing.from_dict(config["preprocessing"])
