"""Engine: every available backend agrees with torch eager on real tiles; clear refusals."""
import dataclasses

import numpy as np
import pytest
from shared_data import crc_tiles

from saganet.bundle import Bundle
from saganet.engine import BACKENDS, Engine, EngineError, backend_status

CI = __import__("os").environ.get("CI", "").lower() == "true"
# TensorRT runs an FP16 engine: probabilities within 0.02 of float32 eager (10 bits of mantissa
# through about 20 layers); the float32 backends are held to 1e-4.
FP16_ATOL = 2e-2


@pytest.fixture(scope="module")
def tiles(data_dir):
    return crc_tiles(data_dir, 14)


@pytest.fixture(scope="module")
def eager(fresh_bundle, tiles):
    return Engine(fresh_bundle, backend="torch").classify(tiles, return_gate=True)


def test_backends_report_their_state(fresh_bundle):
    status = backend_status(fresh_bundle)
    assert list(status) == list(BACKENDS)
    for name in ("torch", "onnxruntime", "aoti"):
        assert status[name] is None, f"{name}: {status[name]}"
    if status["tensorrt"] is not None:  # where TensorRT is installed it may run; elsewhere it says why not
        assert "TensorRT" in status["tensorrt"] or "CUDA" in status["tensorrt"]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_backend_agrees_with_eager(fresh_bundle, tiles, eager, backend):
    why = backend_status(fresh_bundle)[backend]
    if why is not None:
        if backend in ("aoti", "onnxruntime") or (backend == "native" and CI):
            pytest.fail(f"{backend} must be available here: {why}")
        pytest.skip(f"{backend}: {why}")
    pred = Engine(fresh_bundle, backend=backend).classify(tiles, return_gate=True)
    atol = FP16_ATOL if backend == "tensorrt" else 1e-4  # TensorRT builds an FP16 engine
    np.testing.assert_allclose(pred.probs, eager.probs, atol=atol, rtol=0)
    np.testing.assert_allclose(pred.lengths, eager.lengths, atol=atol, rtol=0)
    np.testing.assert_allclose(pred.gate, eager.gate, atol=atol, rtol=0)
    np.testing.assert_array_equal(pred.valid_fraction, eager.valid_fraction)


def test_prediction_shapes_and_sense(fresh_bundle, tiles, eager):
    n, k = len(tiles), len(fresh_bundle.class_names)
    assert eager.probs.shape == (n, k) and eager.lengths.shape == (n, k)
    np.testing.assert_allclose(eager.probs.sum(1), 1.0, atol=1e-5)
    assert ((eager.lengths >= 0) & (eager.lengths < 1)).all()  # squashed vector lengths
    assert eager.gate.shape[0] == n and ((eager.gate > 0) & (eager.gate < 1)).all()
    assert ((eager.valid_fraction >= 0) & (eager.valid_fraction <= 1)).all()
    # The demo model saw these very images in training: it should get most of them right.
    truth = np.repeat(np.arange(7), 2)
    assert (eager.probs.argmax(1) == truth).mean() >= 0.7


def test_batches_of_one_and_many_agree(fresh_bundle, tiles):
    e = Engine(fresh_bundle, backend="aoti")
    whole = e.classify(tiles).probs
    single = np.concatenate([e.classify(t).probs for t in tiles])
    np.testing.assert_allclose(single, whole, atol=1e-5)


def test_auto_picks_the_fastest_available_and_says_so(fresh_bundle):
    e = Engine(fresh_bundle)
    usable = [b for b in BACKENDS if backend_status(fresh_bundle)[b] is None]
    assert e.backend in usable
    assert e.choice.startswith(f"auto chose {e.backend}, the fastest here")
    for other in usable:  # every candidate was timed, and the choice names them
        assert other in e.choice
    for name in BACKENDS:  # and what was not available, with the reason
        if backend_status(fresh_bundle)[name] is not None:
            assert f"{name}:" in e.choice


def test_aoti_package_for_another_cpu_falls_back(fresh_bundle):
    formats = fresh_bundle.manifest.formats
    formats = {**formats, "aoti": {**formats["aoti"], "isa": {"machine": "x86_64", "flags": ["amx_tile", "avx512_fp99"]}}}
    foreign = dataclasses.replace(fresh_bundle, manifest=dataclasses.replace(fresh_bundle.manifest, formats=formats))
    assert isinstance(foreign, Bundle)
    status = backend_status(foreign)
    assert "which this CPU lacks" in status["aoti"]
    e = Engine(foreign)
    assert e.backend not in ("aoti", "native") and "aoti: model.pt2 compiled for a CPU with" in e.choice
    with pytest.raises(EngineError, match="backend 'aoti' cannot run"):
        Engine(foreign, backend="aoti")


def test_aoti_runs_the_fused_op(fresh_bundle, tiles):
    """The compiled package dispatches saganet::gate_mask_pool (the fused kernel), not the
    reference's sigmoid/mul/sum chain."""
    from torch.profiler import ProfilerActivity, profile

    e = Engine(fresh_bundle, backend="aoti")
    image, mask = e.preprocess(tiles[:2])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        e.run(image, mask)
    names = {ev.name for ev in prof.events()}
    assert "saganet::gate_mask_pool" in names


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 112, 112, 3), np.uint8), r"\(N, 224, 224, 3\).*got uint8 \(2, 112, 112, 3\)"),
    (np.zeros((2, 224, 224, 3), np.float32), "got float32"),
    (np.zeros((2, 224, 224, 4), np.uint8), r"got uint8 \(2, 224, 224, 4\)"),
    (np.zeros((0, 224, 224, 3), np.uint8), "no tiles"),
    (np.zeros((224, 224), np.uint8), "got uint8 \\(1, 224, 224\\)|got uint8 \\(224, 224\\)"),
])
def test_wrong_tiles_are_refused(fresh_bundle, bad, message):
    e = Engine(fresh_bundle, backend="torch")
    with pytest.raises(EngineError, match=message):
        e.classify(bad)


def test_unknown_or_unavailable_backend(fresh_bundle):
    with pytest.raises(EngineError, match="unknown backend 'tpu'"):
        Engine(fresh_bundle, backend="tpu")
    unavailable = [b for b, why in backend_status(fresh_bundle).items() if why is not None]
    if not unavailable:
        pytest.skip("every backend runs here")
    with pytest.raises(EngineError, match=f"backend '{unavailable[0]}' cannot run"):
        Engine(fresh_bundle, backend=unavailable[0])


def test_preprocessing_is_the_training_preprocessing(fresh_bundle, tiles):
    """The engine's mask and normalisation equal, bit for bit, what training used (saganet.preprocess)."""
    from saganet.tissue import valid_area_mask

    e = Engine(fresh_bundle, backend="torch")
    image, mask = e.preprocess(tiles[:3])
    prep = fresh_bundle.preprocessing
    for i in range(3):
        np.testing.assert_array_equal(mask[i, 0], valid_area_mask(tiles[i], prep.mask).astype(np.float32))
        np.testing.assert_array_equal(image[i], prep.to_tensor(tiles[i])[0].numpy())


@pytest.fixture(scope="module")
def bf16_bundle(tmp_path_factory, fresh_bundle):
    from saganet.bundle import load_bundle
    from saganet.export import export_bundle

    out = tmp_path_factory.mktemp("bf16") / "bundle"
    export_bundle(fresh_bundle.path, out, formats=("aoti",), precision="bfloat16", log=lambda m: None)
    return load_bundle(out)


def test_bfloat16_package_agrees_closely(bf16_bundle, tiles, eager):
    """bfloat16 is opt-in and not held to float32 parity; it must keep the calls and stay close."""
    assert bf16_bundle.manifest.formats["aoti"]["precision"] == "bfloat16"
    for backend in ("aoti", "native"):
        if backend_status(bf16_bundle)[backend] is not None and not (backend == "native" and CI):
            continue
        pred = Engine(bf16_bundle, backend=backend).classify(tiles)
        assert np.abs(pred.probs - eager.probs).max() < 0.02
        assert (pred.probs.argmax(1) == eager.probs.argmax(1)).all()


def test_export_refuses_unknown_precision(fresh_bundle, tmp_path):
    from saganet.export import export_bundle

    with pytest.raises(ValueError, match="--precision must be one of float32, bfloat16"):
        export_bundle(fresh_bundle.path, tmp_path / "x", precision="int8")


def test_auto_remembers_its_choice_per_model_and_machine(fresh_bundle, tmp_path):
    cache = tmp_path / "choice.json"
    first = Engine(fresh_bundle, backend="auto", choice_cache=cache)
    assert first.choice.startswith("auto chose") and cache.is_file()
    again = Engine(fresh_bundle, backend="auto", choice_cache=cache)
    assert again.backend == first.backend and again.choice.startswith(f"auto: {first.backend}, remembered")
    assert Engine(fresh_bundle, backend="auto", choice_cache=cache, retime=True).choice.startswith("auto chose")
    cache.write_text("{not json")  # a damaged cache: time again, and write a good one
    assert Engine(fresh_bundle, backend="auto", choice_cache=cache).choice.startswith("auto chose")
    assert first.backend in cache.read_text()


def test_the_engine_chunks_to_the_backend_batch_limit(fresh_bundle, tiles):
    """Batches larger than a backend's max_batch are split once, in Engine.run, for every backend."""
    e = Engine(fresh_bundle, backend="onnxruntime")
    whole = e.classify(tiles[:5]).probs
    calls = []
    run = e._run.__call__

    def spy(image, mask):
        calls.append(len(image))
        return run(image, mask)

    e._run = type("Small", (), {"max_batch": 2, "preprocess": None, "__call__": lambda self, i, m: spy(i, m)})()
    np.testing.assert_allclose(e.classify(tiles[:5]).probs, whole, atol=1e-6)
    assert calls == [2, 2, 1]
