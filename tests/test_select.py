"""`--variant auto`: the variant chosen by cross-validation inside the labelled images only."""
import json
from dataclasses import replace

import numpy as np
import pytest

from shared_data import prepared_per_class
from saganet import select
from saganet.cli import main
from saganet.config import TrainConfig

CFG = TrainConfig(epochs=1, crop=32, crops_per_image=2, batch_size=8, threads=2, warmup_epochs=1)


@pytest.fixture(scope="module")
def tiny(data_dir):
    return prepared_per_class(data_dir, "lymphoma_iicbu", 3, CFG)


class _Stub:
    def __init__(self, variant, train_ids):
        self.variant, self.train_ids = variant, train_ids


def _stub_training(monkeypatch, skill):
    """fit records what it trained on; predict is right for `skill[variant]` of the held-out images."""
    seen = []

    def fit(images, masks, labels, class_names, cfg, prep, **kw):
        assert cfg.semi == "" and cfg.val_fraction == 0.0
        seen.append((cfg.variant, [id(im) for im in images]))
        return _Stub(cfg.variant, [id(im) for im in images]), []

    def predict(model, prep, images, masks, **kw):
        truth = [labels_by_id[id(im)] for im in images]
        probs = np.full((len(images), 3), 1 / 3)
        for i, t in enumerate(truth):
            right = i < round(skill[model.variant] * len(images))
            probs[i, t if right else (t + 1) % 3] = 1.0
        return probs

    labels_by_id = {}
    monkeypatch.setattr("saganet.train.fit", fit)
    monkeypatch.setattr(select, "predict", predict)
    return seen, labels_by_id


def test_auto_chooses_the_best_candidate_scored_on_held_out_folds(tiny, monkeypatch):
    imgs, masks, y, classes, prep = tiny
    seen, labels_by_id = _stub_training(monkeypatch, {"saganet": 1 / 3, "baseline": 1.0})
    labels_by_id.update({id(im): int(t) for im, t in zip(imgs, y)})
    cfg, sel = select.resolve_variant(imgs, masks, y, classes, replace(CFG, variant="auto", auto_se=0.0), prep,
                                      log=lambda m: None)
    assert cfg.variant == sel["chosen"] == "baseline" and sel["folds"] == 3
    assert sel["scores"]["baseline"] == 1.0 and sel["scores"]["saganet"] < 1.0
    assert sel["scores"]["saganet"] == pytest.approx(np.mean(sel["fold_scores"]["saganet"]))
    # Every candidate sees the same folds; each labelled image is held out exactly once per candidate.
    for v in ("saganet", "baseline"):
        trained = [ids for variant, ids in seen if variant == v]
        assert len(trained) == 3
        held_out = [i for ids in trained for i in {id(im) for im in imgs} - set(ids)]
        assert sorted(held_out) == sorted(id(im) for im in imgs)
    assert [ids for v, ids in seen if v == "saganet"] == [ids for v, ids in seen if v == "baseline"]


def test_a_tie_goes_to_the_earlier_candidate_and_other_variants_pass_through(tiny, monkeypatch):
    imgs, masks, y, classes, prep = tiny
    _, labels_by_id = _stub_training(monkeypatch, {"saganet": 1.0, "baseline": 1.0})
    labels_by_id.update({id(im): int(t) for im, t in zip(imgs, y)})
    for order in (("saganet", "baseline"), ("baseline", "saganet")):
        cfg = replace(CFG, variant="auto", auto_candidates=order, auto_se=0.0)
        assert select.resolve_variant(imgs, masks, y, classes, cfg, prep, log=lambda m: None)[0].variant == order[0]
    assert select.resolve_variant(imgs, masks, y, classes, CFG, prep) == (CFG, None)


def test_the_one_standard_error_rule_keeps_the_earlier_candidate_unless_the_later_is_clearly_better():
    # baseline first: saganet's mean is higher by less than one SE of its folds, so baseline stays
    folds = {"baseline": [4 / 7, 4 / 7, 4 / 7], "saganet": [6 / 7, 3 / 7, 4 / 7]}
    se = np.std(folds["saganet"], ddof=1) / np.sqrt(3)
    assert select.choose(folds, 1.0) == ("baseline", pytest.approx(se))
    assert select.choose(folds, 0.0)[0] == "saganet"  # 0 SE: the best mean
    # an exact tie at the edge of the band counts as within (fold scores are fractions like 4/7)
    edge = {"baseline": [3 / 7, 6 / 7, 3 / 7], "saganet": [4 / 7, 5 / 7, 4 / 7]}
    assert select.choose(edge, 1.0)[0] == "baseline"
    # clearly better: beyond one SE, the later candidate wins
    clear = {"baseline": [3 / 7, 3 / 7, 4 / 7], "saganet": [6 / 7, 6 / 7, 5 / 7]}
    assert select.choose(clear, 1.0)[0] == "saganet"
    assert select.choose({"baseline": [0.5, 0.5, 0.5]}, 1.0) == ("baseline", 0.0)


def test_auto_refuses_too_few_images_and_unknown_candidates(tiny):
    imgs, masks, y, classes, prep = tiny
    one_cll = [i for i in range(len(y)) if y[i] != 0 or i == int(np.flatnonzero(y == 0)[0])]
    with pytest.raises(ValueError, match="at least 2 per class; the smallest class has 1"):
        select.cross_validate([imgs[i] for i in one_cll], [masks[i] for i in one_cll], y[one_cll], classes,
                              CFG, prep, log=lambda m: None)
    with pytest.raises(ValueError, match="choose one or more of"):
        select.cross_validate(imgs, masks, y, classes, replace(CFG, auto_candidates=("gated",)), prep)


def test_train_auto_records_its_choice_and_trains_the_chosen_variant(data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(data_dir / "lymphoma_iicbu"), "--out", str(out), "--variant", "auto", "--shots", "3",
                 "--epochs", "1", "--image-size", "32", "--crops-per-image", "2", "--batch-size", "8",
                 "--threads", "2", "--auto-folds", "3"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    sel = json.loads((out / "metrics.json").read_text())["variant_selection"]
    # --val-fraction 0.2 holds one image per class out for early stopping; cross-validation runs on
    # the other 2 per class only, so there are 2 folds, not the 3 asked for.
    assert sel["candidates"] == ["baseline", "saganet"] and sel["folds"] == 2 and sel["auto_se"] == 1.0
    assert cfg["train"]["variant"] == sel["chosen"] == select.choose(sel["fold_scores"], 1.0)[0]
    assert "auto: chose" in (out / "train.log").read_text()


def test_study_auto_row_records_the_choice(data_dir, tmp_path):
    from saganet.study import run_study

    cfg = TrainConfig(epochs=1, crop=32, crops_per_image=2, batch_size=8, threads=2, scale=0.25)
    s = run_study(data_dir / "osteosarcoma_ut_test60", tmp_path, [2], 1, ["auto"], cfg, log=lambda m: None)
    rec = json.loads((tmp_path / "runs" / "2shot_r0_auto.json").read_text())
    assert rec["selection"]["folds"] == 2 and rec["selection"]["chosen"] in ("saganet", "baseline")
    assert "What `auto` chose" in (tmp_path / "results.md").read_text()
    assert {r["variant"] for r in s["table"]} == {"auto"}


def test_rule_replay_picks_by_the_rule_and_checks_its_premise(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("replay", Path(__file__).parents[1] / "scripts" / "auto_rule_replay.py")
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    (tmp_path / "runs").mkdir()
    folds = {"baseline": [4 / 7, 4 / 7, 4 / 7], "saganet": [6 / 7, 3 / 7, 4 / 7]}  # saganet ahead by < 1 SE
    rows = [{"variant": "baseline", "balanced_accuracy": 0.7}, {"variant": "saganet", "balanced_accuracy": 0.6},
            {"variant": "auto", "balanced_accuracy": 0.6,
             "selection": {"candidates": ["saganet", "baseline"], "fold_scores": folds, "chosen": "saganet"}}]
    for r in rows:
        (tmp_path / "runs" / f"3shot_r0_{r['variant']}.json").write_text(json.dumps(dict(r, shots=3, repeat=0)))
    out = replay.replay(tmp_path, [0.0, 1.0], ["baseline", "saganet"]).splitlines()
    assert out[0].endswith("1 of 1")
    assert "| 3 | 0 SE, baseline first | 1 | saganet x1 | 0.600 | -0.100 (0 / 1) |" in out
    assert "| 3 | 1 SE, baseline first | 1 | baseline x1 | 0.700 | +0.000 (0 / 0) |" in out
