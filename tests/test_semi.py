"""Learning from unlabelled images: the pool/test protocol, FixMatch, and --unlabelled sources."""
import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from shared_data import few_per_class
from saganet import study
from saganet.cli import main
from saganet.data import load_dataset
from saganet.semi import DEFAULT_THRESHOLD, pseudo_labels
from saganet.study import draw_pool_split
from saganet.config import TrainConfig
from saganet.train import fit, make_preprocessing
from saganet.preprocess import prepare_images

CFG = TrainConfig(epochs=2, crop=64, crops_per_image=4, batch_size=8, threads=2, warmup_epochs=1)


def _labels(data_dir, name):
    samples, classes = load_dataset(data_dir / name)
    return samples, np.array([classes.index(s.label) for s in samples])


def test_pool_split_is_disjoint_nested_stratified_and_seeded(data_dir):
    samples, y = _labels(data_dir, "lymphoma_iicbu")
    for r in range(3):
        labelled, pool, test = draw_pool_split(y, None, 20, r, 0.5)
        ten, twenty = set(labelled[10]), set(labelled[20])
        assert ten < twenty and np.bincount(y[labelled[20]]).tolist() == [20, 20, 20]
        assert not (twenty & set(pool)) and not (twenty & set(test)) and not (set(pool) & set(test))
        assert len(twenty) + len(pool) + len(test) == len(y)  # nothing dropped
        for c in range(3):  # stratified: each class's rest is halved
            rest = (y == c).sum() - 20
            assert abs((y[pool] == c).sum() - rest / 2) <= 0.5
        again = draw_pool_split(y, None, 20, r, 0.5)
        assert np.array_equal(again[1], pool) and np.array_equal(again[2], test)
    other = draw_pool_split(y, None, 20, 1, 0.5)
    assert not np.array_equal(other[2], draw_pool_split(y, None, 20, 0, 0.5)[2])
    with pytest.raises(ValueError, match="unlabelled-fraction"):
        draw_pool_split(y, None, 20, 0, 1.0)


def test_pool_split_groups_patients(data_dir):
    samples, y = _labels(data_dir, "osteosarcoma_ut_test60")
    pats = [s.patient for s in samples]
    for r in range(4):
        labelled, pool, test = draw_pool_split(y, pats, 5, r, 0.5)
        test_patients = {pats[i] for i in test}
        assert not test_patients & {pats[i] for i in pool}
        assert not test_patients & {pats[i] for i in labelled[5]}
        assert not set(pool) & set(labelled[5])


def _six_per_class(data_dir, tmp_path):
    """(manifest, samples): a manifest of the first 6 lymphoma images of each class."""
    samples, _ = load_dataset(data_dir / "lymphoma_iicbu")
    picked = [s for c in ("CLL", "FL", "MCL") for s in [x for x in samples if x.label == c][:6]]
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([s.path, s.label] for s in picked)
    return manifest, picked


def test_pool_split_puts_labelled_only_rows_on_the_pooled_draws_and_first_repeat_draws_fresh_ones(data_dir, tmp_path):
    manifest, _ = _six_per_class(data_dir, tmp_path)
    run = lambda out, **kw: study.run_study(manifest, tmp_path / out, [2], 1, ["classic"], CFG, log=lambda m: None,
                                            first_repeat=1, **kw)
    run("split", pool_split=True)
    run("pooled", pool_methods=("pretrain",))
    run("plain")
    rows = {out: [json.loads(p.read_text()) for p in (tmp_path / out / "runs").glob("*.json")]
            for out in ("split", "pooled", "plain")}
    assert [r["repeat"] for r in rows["split"]] == [1]  # draw 1 only: --first-repeat 1 --repeats 1
    _, pool, test = draw_pool_split(np.repeat([0, 1, 2], 6), None, 2, 1, 0.5)
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}
    assert rows["split"][0]["test_images"] == len(test) and drop(rows["split"][0]) == drop(rows["pooled"][0])
    assert rows["plain"][0]["test_images"] == 12  # without the pool protocol, every non-labelled image is tested
    assert json.loads((tmp_path / "split" / "study_config.json").read_text())["pool_split"] is True


def test_study_hands_the_pool_over_as_paths_only(data_dir, tmp_path, monkeypatch):
    """The pool leaves the protocol as file paths: no label can reach training. The recorded calls
    prove which paths went in, that none is a test or labelled image, and that no label went with them."""
    manifest, picked = _six_per_class(data_dir, tmp_path)
    seen = {"pool": [], "fit": []}
    real_load, real_fit = study.load_unlabelled, study.fit

    def recording_load(sources, **kw):
        assert all(isinstance(p, str) for p in sources)
        seen["pool"].append(list(sources))
        return real_load(sources, **kw)

    def recording_fit(images, masks, labels, *a, unlabelled=None, **kw):
        seen["fit"].append((len(labels), None if unlabelled is None else len(unlabelled[0])))
        return real_fit(images, masks, labels, *a, unlabelled=unlabelled, **kw)

    monkeypatch.setattr(study, "load_unlabelled", recording_load)
    monkeypatch.setattr(study, "fit", recording_fit)
    out = tmp_path / "study"
    study.run_study(manifest, out, [2], 1, ["saganet"], replace(CFG, epochs=1), pool_methods=("fixmatch", "selftrain"),
                    log=lambda m: None)
    labelled, pool, test = draw_pool_split(np.repeat([0, 1, 2], 6), None, 2, 0, 0.5)
    (pool_paths,) = seen["pool"]
    assert pool_paths == [picked[i].path for i in pool]
    assert not set(pool_paths) & {picked[i].path for i in np.concatenate([test, labelled[2]])}
    assert seen["fit"] == [(6, None), (6, len(pool))]  # labelled-only row, then the semi row: 6 labels both times
    rows = {json.loads(p.read_text())["variant"]: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert set(rows) == {"saganet", "saganet+fixmatch", "saganet+selftrain"}
    assert rows["saganet"]["test_images"] == rows["saganet+fixmatch"]["test_images"] == len(test)
    assert set(rows["saganet"]["read_outs"]) == {"tta", "fused_classic"}
    assert "tta" in (out / "results.md").read_text()


def test_pretrain_frozen_row_keeps_the_pool_encoder_fixed_and_is_nobodys_teacher(data_dir, tmp_path, monkeypatch):
    """`+pretrain+frozen` trains gate and head on the pool's encoder, whose weights stay as pretrained;
    `+pretrain+selftrain` still learns from the fine-tuned `+pretrain` model, not from the frozen one."""
    from safetensors.torch import save_file
    from saganet.model import SagaNet, variant_config

    manifest, _ = _six_per_class(data_dir, tmp_path)
    out = tmp_path / "study"
    encoder = out / "encoders" / "r0.safetensors"  # present, so the study skips pretraining
    encoder.parent.mkdir(parents=True)
    torch.manual_seed(7)
    weights = SagaNet(variant_config("saganet", num_classes=3)).backbone.state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, encoder)
    models, teachers = {}, []
    real_fit, real_self_train = study.fit, study.self_train

    def recording_fit(*a, **kw):
        model, history = real_fit(*a, **kw)
        models["frozen" if a[4].freeze_backbone else "finetuned"] = model
        return model, history

    def recording_self_train(*a, teacher=None, **kw):
        teachers.append(teacher)
        return real_self_train(*a, teacher=teacher, **kw)

    monkeypatch.setattr(study, "fit", recording_fit)
    monkeypatch.setattr(study, "self_train", recording_self_train)
    study.run_study(manifest, out, [2], 1, ["saganet"], replace(CFG, epochs=1), log=lambda m: None,
                    pool_methods=("pretrain", "pretrain+frozen", "pretrain+selftrain"))
    params = lambda m: {k: v for k, v in m.backbone.named_parameters()}
    assert all(torch.equal(v, weights[k]) for k, v in params(models["frozen"]).items())
    assert not all(torch.equal(v, weights[k]) for k, v in params(models["finetuned"]).items())
    assert teachers == [models["finetuned"]]
    rows = {p.stem.split("_", 2)[2] for p in (out / "runs").glob("*.json")}
    assert rows == {"saganet", "saganet+pretrain", "saganet+pretrain+frozen", "saganet+pretrain+selftrain"}


def test_pseudo_labels_respect_the_threshold():
    scores = torch.tensor([[0.95, 0.2, 0.1], [0.6, 0.5, 0.1], [0.1, 0.05, 0.9]])
    labels, keep = pseudo_labels({"scores": scores}, "length", 0.5)
    assert labels.tolist() == [0, 0, 2] and keep.tolist() == [True, False, True]  # gaps 0.75, 0.1, 0.8
    logits = torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.9, 0.0]])
    labels, keep = pseudo_labels({"scores": logits}, "linear", 0.95)
    assert labels.tolist() == [0, 0] and keep.tolist() == [True, False]


@pytest.fixture(scope="module")
def small(data_dir):
    raw, y, classes = few_per_class(data_dir, "lymphoma_iicbu", 3)
    pool_raw, _, _ = few_per_class(data_dir, "lymphoma_iicbu", 8)
    pool_raw = pool_raw[3::8] + pool_raw[4::8] + pool_raw[5::8]  # images not among the labelled ones
    prep = make_preprocessing(raw, CFG)
    imgs, masks = prepare_images(raw, prep)
    return imgs, masks, y, classes, prep, prepare_images(pool_raw, prep)


def test_semi_supervised_run_trains_and_resumes_bit_identically(small, tmp_path, monkeypatch):
    imgs, masks, y, classes, prep, pool = small
    cfg = replace(CFG, semi="fixmatch", epochs=3, pseudo_threshold=0.05)
    kept = []
    real = pseudo_labels

    def checked(out, head, threshold):
        labels, keep = real(out, head, threshold)
        top2 = out["scores"].topk(2, dim=1).values
        assert torch.equal(keep, (top2[:, 0] - top2[:, 1]) >= threshold)  # every kept label clears it
        kept.append(int(keep.sum()))
        return labels, keep

    monkeypatch.setattr("saganet.semi.pseudo_labels", checked)
    ref, hist = fit(imgs, masks, y, classes, cfg, prep, log=lambda m: None, progress=False, unlabelled=pool)
    assert len(hist) == 3 and all(0 <= h["confident"] <= 1 for h in hist) and sum(kept) > 0
    assert all(np.isfinite(h["unlabelled_loss"]) for h in hist)
    ck, calls = tmp_path / "ck.pt", {"n": 0}

    def interrupt_in_epoch_two(msg):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(imgs, masks, y, classes, cfg, prep, checkpoint=ck, log=interrupt_in_epoch_two, progress=False, unlabelled=pool)
    resumed, _ = fit(imgs, masks, y, classes, cfg, prep, checkpoint=ck, log=lambda m: None, progress=False, unlabelled=pool)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    plain, _ = fit(imgs, masks, y, classes, replace(CFG, epochs=3), prep, log=lambda m: None, progress=False)
    assert not torch.equal(plain.state_dict()["backbone.conv1.weight"], ref.state_dict()["backbone.conv1.weight"])


def test_semi_needs_both_method_and_images(small):
    imgs, masks, y, classes, prep, pool = small
    with pytest.raises(ValueError, match="unlabelled"):
        fit(imgs, masks, y, classes, replace(CFG, semi="fixmatch"), prep, progress=False)
    with pytest.raises(ValueError, match="unlabelled"):
        fit(imgs, masks, y, classes, CFG, prep, progress=False, unlabelled=pool)
    assert DEFAULT_THRESHOLD == {"linear": 0.95, "length": 0.5}


def test_cli_unlabelled_names_bad_source_and_skips_it(data_dir, tmp_path, capsys):
    samples, _ = load_dataset(data_dir / "lymphoma_iicbu")
    pool = tmp_path / "pool"
    pool.mkdir()
    for s in samples[100:103]:
        (pool / (s.path.split("/")[-1])).write_bytes(open(s.path, "rb").read())
    (pool / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = ["train", str(data_dir / "lymphoma_iicbu"), "--shots", "2", "--epochs", "1", "--crops-per-image", "2",
            "--val-fraction", "0", "--threads", "2", "--variant", "saganet", "--unlabelled", str(pool),
            str(tmp_path / "nowhere")]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "--skip-bad" in err
    assert main(args + ["--out", str(tmp_path / "b"), "--skip-bad"]) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["unlabelled_images"] == 3
    assert sorted(s["path"].split("/")[-1] for s in m["skipped_unlabelled"]) == ["broken.png", "nowhere"]
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["train"]["semi"] == "selftrain" and m["self_training"]["unlabelled"] == 3


def test_self_training_pseudo_labels_per_class_and_keeps_the_budget(small, monkeypatch):
    from saganet import selftrain

    imgs, masks, y, classes, prep, pool = small
    teacher, _ = fit(imgs, masks, y, classes, CFG, prep, log=lambda m: None, progress=False)
    prior = np.bincount(y, minlength=3) / len(y)
    chosen, pseudo, conf = selftrain.pseudo_label_images(teacher, prep, *pool, keep=0.5, prior=prior)
    probs = selftrain.align_to_prior(selftrain.predict(teacher, prep, *pool), prior)
    np.testing.assert_allclose(probs.mean(0), prior, atol=1e-6)  # aligned to the labelled shares
    called = probs.argmax(1)
    for c in np.unique(called):  # per called class: the most confident half, nothing less confident
        mine = np.flatnonzero(called == c)
        picked = [i for i in chosen if called[i] == c]
        assert len(picked) == max(1, round(0.5 * len(mine)))
        assert probs[picked].max(1).min() >= max(probs[i].max() for i in mine if i not in picked) if len(picked) < len(mine) else True
    assert np.array_equal(pseudo, called[chosen])
    seen = []
    real = selftrain.fit
    monkeypatch.setattr(selftrain, "fit", lambda *a, **kw: seen.append((len(a[2]), a[4].crops_per_image)) or real(*a, **kw))
    student, hist, info = selftrain.self_train(imgs, masks, y, classes, CFG, prep, pool, teacher=teacher,
                                               log=lambda m: None, progress=False)
    assert seen == [(len(y) + len(chosen), round(CFG.crops_per_image * len(y) / (len(y) + len(chosen))))]
    assert info["pseudo_labelled"] == len(chosen) and sum(info["per_class"].values()) == len(chosen)
    with pytest.raises(ValueError, match="keep"):
        selftrain.pseudo_label_images(teacher, prep, *pool, keep=0)


def test_test_time_augmentation_is_invariant_to_turns_and_flips(small):
    from saganet.evaluate import predict

    imgs, masks, y, classes, prep, pool = small
    model, _ = fit(imgs, masks, y, classes, replace(CFG, epochs=1), prep, log=lambda m: None, progress=False)
    a = predict(model, prep, imgs[:3], masks[:3], tta=True)
    b = predict(model, prep, [np.rot90(im).copy() for im in imgs[:3]], [np.rot90(m).copy() for m in masks[:3]], tta=True)
    c = predict(model, prep, [im[:, ::-1].copy() for im in imgs[:3]], [m[:, ::-1].copy() for m in masks[:3]], tta=True)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=1e-5)
    assert not np.allclose(a, predict(model, prep, imgs[:3], masks[:3]), atol=1e-7)
