"""Pretraining throughput (tiles/s, each tile seen as two views) and memory, on real tiles. Not asserted.

Memory: bytes autograd saves for backward in one step (exact, grows with batch and crop), and the
process's peak RSS after the step (includes the tile bank and the allocator's slack; the machine
is shared, so read it as an upper bound). Run: make bench.
"""
import resource

import numpy as np
import pytest
import torch

from saganet.config import PretrainConfig
from saganet.pretrain import SelfSupervised, augment, build_tile_bank

CFG = PretrainConfig(batch_size=128, max_tiles=256, slide_downsamples=(1,))


@pytest.fixture(scope="module")
def tiles(data_dir):
    bank, _, _ = build_tile_bank([str(data_dir / "wsi" / "cmu_small_region.svs")], CFG, log=lambda m: None)
    return torch.from_numpy(bank[np.arange(CFG.batch_size) % len(bank)])


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_pretrain_step(benchmark, tiles, method):
    torch.manual_seed(0)
    model = SelfSupervised(PretrainConfig(method=method))
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("target.")], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()

    def step():
        v1, v2 = augment(tiles, CFG, gen, (0.5,) * 3, (0.25,) * 3), augment(tiles, CFG, gen, (0.5,) * 3, (0.25,) * 3)
        loss = model.loss(v1, v2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_target(0.99)

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda a: (saved.append(a.numel() * a.element_size()), a)[1], lambda a: a):
        step()
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    info = benchmark.extra_info
    info["saved_activation_MiB"] = round(sum(saved) / 2**20, 1)
    info["peak_rss_MiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    info["batch"], info["crop"], info["threads"] = CFG.batch_size, CFG.crop, torch.get_num_threads()
    info["tiles_per_s"] = round(CFG.batch_size / benchmark.stats.stats.mean, 1)


def test_augment_speed(benchmark, tiles):
    gen = torch.Generator().manual_seed(0)
    benchmark(augment, tiles, CFG, gen, (0.5,) * 3, (0.25,) * 3)
    benchmark.extra_info["views_per_s"] = round(len(tiles) / benchmark.stats.stats.mean, 1)
