"""Self-supervised pretraining on a few real tiles: seconds, not minutes."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from skimage.color import hed2rgb, rgb2hed

from shared_data import few_per_class, prepared_per_class
from saganet.cli import main
from saganet.augment import hed_jitter_torch
from saganet.config import PretrainConfig
from saganet.pretrain import augment, build_tile_bank, pretrain, read_card
from saganet.study import run_study
from saganet.config import TrainConfig
from saganet.train import fit

TINY = PretrainConfig(epochs=2, tile_size=64, crop=32, max_tiles=48, batch_size=16, slide_downsamples=(2,), threads=2,
                      warmup_epochs=1)


@pytest.fixture(scope="module")
def sources(data_dir):
    crc = sorted((data_dir / "crc_val_he_7k_test70" / "TUM").glob("*"))[:3]
    return [str(p) for p in crc] + [str(data_dir / "wsi" / "cmu_small_region.svs")]


@pytest.fixture(scope="module")
def encoder(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "enc.safetensors"
    pretrain(sources, out, TINY, log=lambda m: None, progress=False)
    return out


def test_card_says_what_went_in(encoder, sources):
    card = read_card(encoder)
    assert card["method"] == "simclr" and card["backbone"] == "resnet-tiny" and card["steps"] == 2 * (48 // 16)
    kinds = {r["path"]: r["kind"] for r in card["sources"]}
    assert kinds[sources[-1]] == "slide" and all(kinds[p] == "image" for p in sources[:3])
    assert sum(r["tiles"] for r in card["sources"]) == card["tiles"] <= 48
    assert card["train_seconds"] > 0 and card["skipped"] == [] and len(card["history"]) == 2
    assert [(i["images"], i["slides"]) for i in card["inputs"]] == [(1, 0)] * 3 + [(0, 1)]
    assert sum(i["tiles"] for i in card["inputs"]) == card["tiles"]


def test_encoder_loads_into_training(encoder, data_dir):
    cfg = TrainConfig(epochs=1, crop=32, crops_per_image=2, batch_size=6, threads=2, warmup_epochs=0,
                      pretrained=str(encoder), freeze_backbone=True)
    imgs, masks, y, classes, prep = prepared_per_class(data_dir, "lymphoma_iicbu", 2, cfg)
    model, _ = fit(imgs, masks, y, classes, cfg, prep, log=lambda m: None, progress=False)
    enc = load_file(str(encoder))
    # Frozen: the weights are the encoder's (BN running statistics adapt and are not compared).
    for k, v in model.backbone.state_dict().items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(v, enc[k]), k
    tuned, _ = fit(imgs, masks, y, classes, replace(cfg, freeze_backbone=False), prep, log=lambda m: None, progress=False)
    assert not torch.equal(tuned.backbone.conv1.weight, enc["conv1.weight"])  # fine-tuning moves it
    with pytest.raises(ValueError, match="pretrained as backbone 'resnet-tiny'.*--backbone resnet-tiny"):
        fit(imgs, masks, y, classes, replace(cfg, backbone="resnet-small"), prep, log=lambda m: None, progress=False)


def test_interrupted_pretraining_resumes_to_same_encoder(sources, encoder, tmp_path):
    out = tmp_path / "enc.safetensors"

    def stop_after_first_epoch(msg):
        if msg.startswith('{"epoch": 1,'):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(sources, out, TINY, log=stop_after_first_epoch, progress=False)
    assert not out.exists() and (tmp_path / "enc.safetensors.ckpt").is_file()
    logs = []
    pretrain(sources, out, TINY, log=logs.append, progress=False)
    assert any("resumed" in m and "after epoch 1" in m for m in logs)
    a, b = load_file(str(encoder)), load_file(str(out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="other settings"):
        pretrain(sources, out, replace(TINY, lr=1e-3), log=lambda m: None, progress=False)


def test_corrupt_sources_are_reported_and_skipped(sources, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "broken.svs").write_bytes(b"II*\x00" + bytes(200))
    logs = []
    bank, records, skipped = build_tile_bank([sources[0], str(tmp_path)], TINY, log=logs.append)
    assert len(bank) > 0
    assert {s["path"] for s in skipped} == {str(tmp_path / "broken.png"), str(tmp_path / "broken.svs")}
    assert all(s["path"] in s["error"] and s["source"] == str(tmp_path) for s in skipped) and len(logs) == 2
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_tile_bank([str(tmp_path / "nowhere")], TINY)
    with pytest.raises(ValueError, match="no tissue tiles"):
        build_tile_bank([str(tmp_path / "broken.png")], TINY, log=lambda m: None)


def test_cli_pretrain_errors(tmp_path, capsys):
    assert main(["pretrain", str(tmp_path / "missing.svs"), "--out", str(tmp_path / "e.safetensors")]) == 2
    assert "missing.svs: no such file" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path), "--out", str(tmp_path / "e.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


def test_hed_jitter_torch_matches_skimage(data_dir):
    rgb, _, _ = few_per_class(data_dir, "crc_val_he_7k_test70", 1)
    rgb = rgb[6][:64, :64]  # a real H&E tile (TUM)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    # No jitter: colour deconvolution and back is the identity.
    assert torch.allclose(hed_jitter_torch(x, torch.Generator().manual_seed(0), 0.0, 0.0), x, atol=1e-4)
    # With jitter: the same scaling through skimage gives the same image. skimage zeroes negative
    # stain amounts (rare in H&E, lossy), so compare on average, not pixel by pixel.
    g = torch.Generator().manual_seed(3)
    y = hed_jitter_torch(x, g, 0.2, 0.0)[0].permute(1, 2, 0).numpy()
    g = torch.Generator().manual_seed(3)
    alpha = (1 + 0.2 * (2 * torch.rand(1, 3, 1, 1, generator=g) - 1)).view(3).numpy()
    ref = np.clip(hed2rgb(rgb2hed(rgb) * alpha), 0, 1)
    assert np.abs(y - ref).mean() < 0.01 and np.abs(y - rgb / 255).mean() > 0.01


def test_augment_shapes_and_determinism():
    tiles = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8))
    a = augment(tiles, TINY, torch.Generator().manual_seed(7), (0.5,) * 3, (0.25,) * 3)
    b = augment(tiles, TINY, torch.Generator().manual_seed(7), (0.5,) * 3, (0.25,) * 3)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b) and torch.isfinite(a).all()


def test_study_with_encoder(encoder, data_dir, tmp_path):
    cfg = TrainConfig(epochs=1, crop=32, crops_per_image=2, threads=2, scale=0.25, pretrained=str(encoder))
    s = run_study(data_dir / "osteosarcoma_ut_test60", tmp_path, [2], 1, ["baseline", "saganet"], cfg,
                  inits=["scratch", "frozen"], log=lambda m: None)
    assert {r["variant"] for r in s["table"]} == {"baseline", "saganet", "baseline+frozen", "saganet+frozen"}
    pairs = {(p["variant"], p["reference"]) for p in s["paired"]}
    assert ("saganet+frozen", "baseline+frozen") in pairs and ("saganet+frozen", "saganet") in pairs
    with pytest.raises(ValueError, match="need an encoder"):
        run_study(data_dir / "osteosarcoma_ut_test60", tmp_path, [2], 1, ["saganet"], replace(cfg, pretrained=""),
                  inits=["frozen"])


def test_pretraining_streams_the_bank_statistics(tmp_path):
    """The bank's mean and std are computed one tile at a time (preprocess.channel_stats): a float64
    copy of the whole bank would be about 8 GB at the defaults. Here a 49 MB bank, whose copy (and
    its scaled temporary) would add about 800 MB to the process's peak; one short epoch adds little."""
    import subprocess
    import sys

    code = f"""
import resource, numpy as np
from saganet import pretrain as p
from saganet.config import PretrainConfig
bank = np.random.default_rng(0).integers(0, 256, (1000, 128, 128, 3), dtype=np.uint8)
p.build_tile_bank = lambda sources, cfg, log: (bank, [{{"path": "x", "kind": "image", "source": "x", "candidates": 1000}}], [])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
p.pretrain(["x"], {str(tmp_path / "enc.safetensors")!r}, PretrainConfig(steps=1, epochs=1, warmup_epochs=0, batch_size=64,
           crop=32, threads=2), log=lambda m: None, progress=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    grown_mb = float(out.stdout.split()[-1])
    assert grown_mb < 400, f"pretraining raised the peak by {grown_mb:.0f} MB: the bank was copied"
