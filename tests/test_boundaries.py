"""Inference (bundle, engine, slide, serve) never imports training code: with the training modules
blocked, the inference modules import, an engine classifies tiles and the server app is built."""
import subprocess
import sys

from shared_data import DEMO_BUNDLE

TRAINING = ("saganet.train", "saganet.evaluate", "saganet.study", "saganet.pretrain", "saganet.selftrain",
            "saganet.semi", "saganet.unlabelled", "saganet.export", "saganet.augment", "saganet.classic",
            "saganet.select")


def test_inference_runs_with_training_modules_blocked(tmp_path):
    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in {TRAINING!r}:
            raise ImportError(f"{{name}} is training code, imported on the inference path")
sys.meta_path.insert(0, Block())
import numpy as np
import saganet.bundle, saganet.engine, saganet.slide.pipeline, saganet.serve.app, saganet.serve.viewer, saganet.run
from saganet import Engine
from saganet.serve.app import Settings, create_app
e = Engine({str(DEMO_BUNDLE)!r}, backend="onnxruntime")
p = e.classify(np.full((2, e.tile_size, e.tile_size, 3), 200, np.uint8))
create_app(Settings(model={str(DEMO_BUNDLE)!r}, state_dir={str(tmp_path / "state")!r}), engine=e)
print("ok", p.probs.shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", "(2,", "7)"]
