"""Bundles: what export writes, and clear errors for damaged or foreign bundles."""
import json
import shutil

import pytest

from saganet.bundle import FORMAT_VERSION, BundleError, isa_mismatch, load_bundle, sha256_file
from saganet.export import export_bundle
from saganet.cli import main


def test_manifest_describes_everything_inference_needs(fresh_bundle):
    m = fresh_bundle.manifest.raw  # as written
    assert m["format"] == "saganet-bundle" and m["format_version"] == FORMAT_VERSION
    assert m["class_names"] == ["ADI", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
    assert m["tile_size"] == 224 and m["mpp"] == 0.5
    assert set(m["preprocessing"]) >= {"mean", "std", "mask", "stain_target"} and m["preprocessing"]["scale"] == 1.0
    assert m["model"]["head"] == "length"
    assert set(m["files"]) == {"weights.safetensors", "model.onnx", "model.pt2", "card.md"}
    for name, digest in m["files"].items():
        assert sha256_file(fresh_bundle.file(name)) == digest
    assert m["formats"]["aoti"]["custom_ops"] == ["saganet::gate_mask_pool"]
    assert isa_mismatch(m["formats"]["aoti"]["isa"]) is None


def test_onnx_is_standard_and_checked(fresh_bundle):
    import onnx

    model = onnx.load(str(fresh_bundle.file("model.onnx")))
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value, "batch dimension must be dynamic"
    assert [i.name for i in model.graph.input] == ["image", "mask"]
    assert [o.name for o in model.graph.output] == ["probs", "scores", "gate"]


def test_demo_bundle_is_intact_and_carded(demo_bundle):
    card = demo_bundle.file("card.md").read_text()
    assert "NOT FOR DIAGNOSIS" in card and "CC BY 4.0" in card and "Kather" in card
    assert "saganet export runs/demo-crc7" in card  # the exact command is recorded
    assert demo_bundle.file("weights.safetensors").stat().st_size < 8_000_000


def _copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle.path, dst)
    return dst


def test_damaged_file_is_named(demo_bundle, tmp_path):
    b = _copy(demo_bundle, tmp_path)
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 does not match"):
        load_bundle(b)
    load_bundle(b, verify=False)  # explicitly unverified loading still opens it


def test_missing_file_is_named(demo_bundle, tmp_path):
    b = _copy(demo_bundle, tmp_path)
    (b / "weights.safetensors").unlink()
    with pytest.raises(BundleError, match=r"weights\.safetensors: listed in the manifest but missing"):
        load_bundle(b)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="something-else"), "not a saganet bundle"),
    (lambda m: m.update(format_version=FORMAT_VERSION + 1), "newer saganet"),
    (lambda m: m.pop("class_names"), "'class_names' is missing"),
    (lambda m: m.update(tile_size="224"), "'tile_size' is missing or not"),
    (lambda m: m.update(mpp=0), "must be positive"),
    (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), "not a plain name"),
    (lambda m: m["preprocessing"].update(scale=0.5), "scale must be 1"),  # as the C++ engine refuses it
    (lambda m: m["preprocessing"].pop("mean"), "preprocessing is not readable"),
])
def test_foreign_or_broken_manifest(demo_bundle, tmp_path, edit, message):
    b = _copy(demo_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    edit(m)
    (b / "manifest.json").write_text(json.dumps(m))
    reseal(b)  # past the manifest's own digest, to the check under test
    with pytest.raises(BundleError, match=message):
        load_bundle(b)


def reseal(bundle_dir):
    """Rewrite manifest.sha256 after an edit, as someone who means it would."""
    (bundle_dir / "manifest.sha256").write_text(sha256_file(bundle_dir / "manifest.json") + "\n")


def test_an_edited_manifest_is_refused(demo_bundle, tmp_path):
    """Issue 13, item 4: tile_size 224 -> 112 in manifest.json made the compiled engines segfault."""
    b = _copy(demo_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["tile_size"] = 112
    (b / "manifest.json").write_text(json.dumps(m, indent=2))
    with pytest.raises(BundleError, match="changed after export"):
        load_bundle(b)
    (b / "manifest.sha256").unlink()
    with pytest.raises(BundleError, match="manifest.sha256: missing"):
        load_bundle(b)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_export_refuses_bad_arguments(tmp_path, capsys):
    assert main(["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "b"), "--mpp", "0.5"]) == 2
    assert "no-run/config.json: missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--mpp must be a positive number"):
        export_bundle(tmp_path, tmp_path / "b", mpp=-1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        export_bundle(tmp_path, tmp_path / "full", mpp=0.5)
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_isa_mismatch_is_explained():
    import platform

    here = platform.machine()
    assert isa_mismatch({"machine": here, "flags": []}) is None
    assert isa_mismatch({"machine": here, "flags": ["avx2", "not_a_cpu_flag"]}).endswith("not_a_cpu_flag, which this CPU lacks")
    assert "riscv64" in isa_mismatch({"machine": "riscv64", "flags": []})


def test_export_keeps_the_trained_weights(demo_bundle, fresh_bundle):
    assert fresh_bundle.manifest.files["weights.safetensors"] == demo_bundle.manifest.files["weights.safetensors"]
    assert fresh_bundle.model_id.split("@")[1] == demo_bundle.model_id.split("@")[1]


def test_predict_on_broken_manifests_explains_without_a_traceback(demo_bundle, tmp_path, data_dir, capsys):
    """Issue 13, item 10: a manifest nested 100,000 deep, and class_names cut to 3 (resealed, so the
    digest does not catch it), ended in Python tracebacks."""
    import numpy as np

    from saganet.engine import Engine

    slide = str(data_dir / "wsi" / "cmu_small_region.svs")
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "manifest.json").write_text('{"a":' * 100000 + "1" + "}" * 100000)
    assert main(["predict", str(deep), slide, "--out", str(tmp_path / "o1")]) == 2
    assert "nested too deeply" in capsys.readouterr().err
    cut = _copy(demo_bundle, tmp_path)
    m = json.loads((cut / "manifest.json").read_text())
    m["class_names"] = m["class_names"][:3]
    (cut / "manifest.json").write_text(json.dumps(m))
    reseal(cut)
    assert main(["predict", str(cut), slide, "--out", str(tmp_path / "o2"), "--backend", "onnxruntime"]) == 2
    assert "3 class_names for a model of 7 classes" in capsys.readouterr().err
    m["model"]["num_classes"] = 3  # consistent on paper; the network still gives 7 scores
    (cut / "manifest.json").write_text(json.dumps(m))
    reseal(cut)
    with pytest.raises(BundleError, match="the network gives 7 class scores but the manifest names 3"):
        Engine(cut, backend="onnxruntime").classify(np.full((1, 224, 224, 3), 200, np.uint8))
