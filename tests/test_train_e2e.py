"""A tiny end-to-end training on real lymphoma images: seconds, not minutes."""
import json
from pathlib import Path
from dataclasses import replace

import numpy as np
import pytest
import torch

from shared_data import prepared_per_class
from saganet.cli import main
from saganet.data import load_dataset, load_images
from saganet.evaluate import predict
from saganet.model import saganet_loss
from saganet.config import TrainConfig
from saganet.run import load_run
from saganet.train import _random_crop_batch, fit
from saganet.preprocess import prepare_images

CFG = TrainConfig(epochs=4, crop=64, crops_per_image=8, batch_size=16, threads=2, warmup_epochs=1)


@pytest.fixture(scope="module")
def tiny(data_dir):
    return prepared_per_class(data_dir, "lymphoma_iicbu", 4, CFG)


def _fixed_batch_loss(model, tiny, cfg):
    imgs, masks, y, classes, prep = tiny
    x, m, t = _random_crop_batch(imgs, masks, y, np.arange(len(y)), cfg.crop, np.random.default_rng(5), 0.0)
    model.eval()
    with torch.no_grad():
        return saganet_loss(model(prep.to_tensor(x), torch.from_numpy(m).unsqueeze(1).float()), t, model.config.loss)["class_loss"].item()


def test_loss_falls(tiny):
    imgs, masks, y, classes, prep = tiny
    untrained, _ = fit(imgs, masks, y, classes, replace(CFG, epochs=0), prep, log=lambda m: None, progress=False)
    before = _fixed_batch_loss(untrained, tiny, CFG)
    model, hist = fit(imgs, masks, y, classes, CFG, prep, log=lambda m: None, progress=False)
    assert len(hist) == CFG.epochs
    assert _fixed_batch_loss(model, tiny, CFG) < 0.9 * before


def test_deterministic_with_seed(tiny, tmp_path):
    imgs, masks, y, classes, prep = tiny
    cfg = replace(CFG, epochs=2)
    a, _ = fit(imgs, masks, y, classes, cfg, prep, log=lambda m: None, progress=False)
    b, _ = fit(imgs, masks, y, classes, cfg, prep, checkpoint=tmp_path / "ck.pt", log=lambda m: None, progress=False)
    c, _ = fit(imgs, masks, y, classes, replace(cfg, seed=1), prep, log=lambda m: None, progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.state_dict()["backbone.conv1.weight"], c.state_dict()["backbone.conv1.weight"])


def test_interrupted_run_resumes_to_same_weights(tiny, tmp_path):
    imgs, masks, y, classes, prep = tiny
    cfg = replace(CFG, epochs=3)
    ref, _ = fit(imgs, masks, y, classes, cfg, prep, log=lambda m: None, progress=False)
    ck = tmp_path / "ck.pt"
    calls = {"n": 0}

    def interrupt_in_epoch_two(msg):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2 has run; only epoch 1's checkpoint is on disk
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(imgs, masks, y, classes, cfg, prep, checkpoint=ck, log=interrupt_in_epoch_two, progress=False)
    assert torch.load(ck, weights_only=True)["epoch"] == 1
    resumed, hist = fit(imgs, masks, y, classes, cfg, prep, checkpoint=ck, log=lambda m: None, progress=False)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_cli_train_eval_reload_bit_identical(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", str(data_dir / "crc_val_he_7k_test70"), "--out", str(run), "--shots", "3", "--epochs", "2",
               "--image-size", "64", "--crops-per-image", "4", "--val-fraction", "0.34", "--threads", "2"])
    assert rc == 0
    for f in ("weights.safetensors", "config.json", "metrics.json", "train.log"):
        assert (run / f).is_file(), f
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_images"] == 14 and metrics["val_images"] == 7
    # the default variant is auto: chosen by cross-validation inside the 14 training images
    chosen = metrics["variant_selection"]["chosen"]
    assert json.loads((run / "config.json").read_text())["train"]["variant"] == chosen in ("baseline", "saganet")
    assert "val_balanced_accuracy" in metrics["history"][0]
    rc = main(["eval", str(run), str(data_dir / "crc_val_he_7k_test70"), "--exclude-train"])
    assert rc == 0
    ev = json.loads((run / "eval" / "metrics.json").read_text())
    assert ev["n"] == 70 - 21 and len(ev["confusion_matrix"]) == 7 and (run / "eval" / "confusion.png").is_file()
    assert {"accuracy", "balanced_accuracy", "macro_f1", "per_class_recall", "auc_ovr"} <= set(ev)
    # Reloading the run twice gives bit-identical predictions.
    samples, classes = load_dataset(data_dir / "crc_val_he_7k_test70")
    raw, _, _ = load_images(samples[:5])
    outs = []
    for _ in range(2):
        model, config, prep = load_run(run)
        imgs, masks = prepare_images(raw, prep)
        outs.append(predict(model, prep, imgs, masks))
    assert np.array_equal(outs[0], outs[1])


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "norun"), str(tmp_path)]) == 2
    assert "config.json: missing" in capsys.readouterr().err


def test_tiny_study_resumes(data_dir, tmp_path):
    from saganet.study import run_study

    cfg = TrainConfig(epochs=1, crop=64, crops_per_image=2, threads=2)
    args = (data_dir / "osteosarcoma_ut_test60", tmp_path, [2], 1, ["classic", "no-gate"], replace(cfg, scale=0.25))
    s = run_study(*args, log=lambda m: None)
    assert {r["variant"] for r in s["table"]} == {"classic", "no-gate"}
    first = json.loads((tmp_path / "runs" / "2shot_r0_classic.json").read_text())
    run_study(*args, log=lambda m: None)  # everything done: nothing is recomputed
    assert json.loads((tmp_path / "runs" / "2shot_r0_classic.json").read_text()) == first
    assert (tmp_path / "results.md").read_text().count("|") > 10 and (tmp_path / "results.png").is_file()


def test_patient_split_never_shares_patients(data_dir):
    from saganet.study import draw_split, patient_splits

    samples, classes = load_dataset(data_dir / "osteosarcoma_ut_test60")
    y = np.array([classes.index(s.label) for s in samples])
    pats = [s.patient for s in samples]
    assert len(patient_splits(y, pats)) >= 2
    for r in range(5):
        tr, te = draw_split(y, pats, 5, r)
        assert not {pats[i] for i in tr} & {pats[i] for i in te}
        assert set(y[tr]) == set(y[te]) == {0, 1, 2} and np.bincount(y[tr]).tolist() == [5, 5, 5]


def test_user_masks(data_dir, tmp_path, capsys):
    from PIL import Image

    data = data_dir / "crc_val_he_7k_test70"
    samples, _ = load_dataset(data)
    masks = tmp_path / "masks"
    for s in samples[:-1]:  # the last image gets no mask: its absence must be named
        rel = Path(s.path).relative_to(data).with_suffix(".png")
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        m = np.zeros((224, 224), np.uint8)
        m[:, :112] = 255
        Image.fromarray(m).save(masks / rel)
    missing = Path(samples[-1].path).relative_to(data).with_suffix(".png")
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--image-size", "64",
            "--crops-per-image", "1", "--val-fraction", "0", "--mask-dir", str(masks), "--variant", "saganet"]
    assert main(args) == 2
    assert f"{missing.name}: mask file not found" in capsys.readouterr().err
    (masks / missing).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((224, 224), 255, np.uint8)).save(masks / missing)
    assert main(args) == 0
    assert main(["eval", str(tmp_path / "run"), str(data), "--mask-dir", str(masks)]) == 0


def test_resume_refuses_other_settings_and_corrupt_checkpoint(tiny, tmp_path):
    imgs, masks, y, classes, prep = tiny
    ck = tmp_path / "ck.pt"
    fit(imgs, masks, y, classes, replace(CFG, epochs=1), prep, checkpoint=ck, log=lambda m: None, progress=False)
    with pytest.raises(ValueError, match="written with other settings"):
        fit(imgs, masks, y, classes, replace(CFG, epochs=2), prep, checkpoint=ck, log=lambda m: None, progress=False)
    ck.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        fit(imgs, masks, y, classes, CFG, prep, checkpoint=ck, log=lambda m: None, progress=False)


def test_checkpoints_from_before_the_selection_settings_still_resume(tiny, tmp_path):
    """`--variant auto`'s settings only choose what fit trains: a checkpoint written before they existed
    or changed (2026-11-29: auto_se added, the candidate order turned) resumes."""
    imgs, masks, y, classes, prep = tiny
    ck = tmp_path / "ck.pt"
    fit(imgs, masks, y, classes, replace(CFG, epochs=1), prep, checkpoint=ck, log=lambda m: None, progress=False)
    state = torch.load(ck, weights_only=True)
    old = {k: v for k, v in json.loads(state["fingerprint"]).items() if k != "auto_se"}
    for recorded in (dict(old, auto_candidates=["saganet", "baseline"]),
                     {k: v for k, v in old.items() if not k.startswith("auto_")}):
        torch.save(dict(state, fingerprint=json.dumps(recorded)), ck)
        logged = []
        fit(imgs, masks, y, classes, replace(CFG, epochs=1, auto_se=0.0), prep, checkpoint=ck, log=logged.append,
            progress=False)
        assert any("resumed from" in m for m in logged)


def test_early_stopping_is_remembered(tiny, tmp_path):
    imgs, masks, y, classes, prep = tiny
    cfg = replace(CFG, epochs=6, patience=1, lr=0.0)  # lr 0: validation never improves after epoch 1
    val = (imgs[:3], masks[:3], y[:3])
    ck = tmp_path / "ck.pt"
    _, hist = fit(imgs, masks, y, classes, cfg, prep, val=val, checkpoint=ck, log=lambda m: None, progress=False)
    assert len(hist) == 2
    _, hist2 = fit(imgs, masks, y, classes, cfg, prep, val=val, checkpoint=ck, log=lambda m: None, progress=False)
    assert len(hist2) == 2  # resuming a stopped run trains no further


def test_tiny_image_error_names_file(tmp_path, capsys):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "data" / "b" / "dot.png")
    rc = main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1", "--val-fraction", "0"])
    assert rc == 2
    assert "dot.png" in capsys.readouterr().err
