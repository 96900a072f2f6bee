"""Training speed (images/s) and memory per variant, on real lymphoma crops. Not asserted.

Memory is the bytes autograd saves for backward in one step (activations), measured with
saved_tensors_hooks: it is what grows with batch and crop size, and it is exact, unlike RSS on a
shared machine. Run: make bench (or pytest benchmarks --benchmark-only).
"""
import numpy as np
import pytest
import torch

from shared_data import few_per_class
from saganet.data import load_dataset, load_images
from saganet.model import SagaNet, saganet_loss, variant_config
from saganet.config import TrainConfig
from saganet.train import _random_crop_batch, make_preprocessing
from saganet.preprocess import prepare_images

BATCH, CROP = 32, 64


@pytest.fixture(scope="module")
def batch(data_dir):
    raw, y, classes = few_per_class(data_dir, "lymphoma_iicbu", 4)
    cfg = TrainConfig(crop=CROP)
    prep = make_preprocessing(raw, cfg)
    imgs, masks = prepare_images(raw, prep)
    idx = np.random.default_rng(0).integers(0, len(y), BATCH)
    x, m, t = _random_crop_batch(imgs, masks, y, idx, CROP, np.random.default_rng(1), 0.05)
    return prep.to_tensor(x), torch.from_numpy(m).unsqueeze(1).float(), t, len(classes)


@pytest.mark.parametrize("variant", ["saganet", "baseline", "no-gate", "no-length", "no-mask"])
def test_train_step(benchmark, batch, variant):
    torch.manual_seed(0)
    x, m, t, k = batch
    model = SagaNet(variant_config(variant, num_classes=k))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step():
        out = model(x, m)
        loss = saganet_loss(out, t, model.config.loss)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda a: (saved.append(a.numel() * a.element_size()), a)[1], lambda a: a):
        step()
    benchmark.extra_info["saved_activation_MiB"] = round(sum(saved) / 2**20, 2)
    benchmark.extra_info["batch"], benchmark.extra_info["crop"] = BATCH, CROP
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = round(BATCH / benchmark.stats.stats.mean, 1)


def test_valid_area_mask_speed(benchmark, data_dir):
    from saganet import valid_area_mask

    samples, _ = load_dataset(data_dir / "lymphoma_iicbu")
    im = load_images(samples[:1])[0][0]
    benchmark(valid_area_mask, im)
    benchmark.extra_info["megapixels_per_s"] = round(im.shape[0] * im.shape[1] / 1e6 / benchmark.stats.stats.mean, 2)
