"""The native C++ engine: its preprocessing gives the Python bits, it runs the fused op, it refuses
bad bundles with the reason, it is thread-safe, and its C API works from a foreign caller."""
import ctypes
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shared_data import crc_tiles

from saganet.config import MaskConfig
from saganet.tissue import valid_area_mask

C = pytest.importorskip("saganet._C")
CI = os.environ.get("CI", "").lower() == "true"
if not hasattr(C, "Engine"):
    if CI:
        pytest.fail("saganet._C was built without the native engine", pytrace=False)
    pytest.skip("saganet._C was built without the native engine", allow_module_level=True)


def _images(data_dir, every=15):
    files = sorted(p for s in ("lymphoma_iicbu", "crc_val_he_7k_test70", "osteosarcoma_ut_test60")
                   for p in (data_dir / s).glob("*/*.*") if p.suffix.lower() in (".png", ".jpg", ".tif"))
    return [np.asarray(Image.open(f).convert("RGB")) for f in files[::every]]


def test_cpp_mask_is_the_python_mask_bit_for_bit(data_dir):
    images = _images(data_dir)
    assert len(images) >= 15
    for cfg in (MaskConfig(), MaskConfig(focus_relative=0.0),  # adaptive focus threshold, and the fixed floor
                MaskConfig(tissue_od=0.5, focus_window=5, cell_window=9, min_region=0, focus_relative=0.3)):
        for rgb in images:
            np.testing.assert_array_equal(C.valid_area_mask(rgb, cfg.to_dict()), valid_area_mask(rgb, cfg))


def test_cpp_mask_refuses_what_python_refuses():
    with pytest.raises(ValueError, match="at least 2x2"):
        C.valid_area_mask(np.zeros((1, 5, 3), np.uint8), {})
    with pytest.raises(ValueError, match="'otsu' is Python-only"):
        C.valid_area_mask(np.zeros((8, 8, 3), np.uint8), {"nuclei_threshold": "otsu"})
    with pytest.raises(ValueError, match="unknown mask setting 'blur'"):
        C.valid_area_mask(np.zeros((8, 8, 3), np.uint8), {"blur": 1})
    with pytest.raises(ValueError, match="ending in 3"):
        C.valid_area_mask(np.zeros((8, 8, 4), np.uint8), {})


def test_native_engine_preprocessing_equals_python(fresh_bundle, data_dir):
    from saganet.engine import Engine

    tiles = crc_tiles(data_dir, 14)
    native = Engine(fresh_bundle, backend="native")
    python = Engine(fresh_bundle, backend="aoti")
    (ni, nm), (pi, pm) = native.preprocess(tiles), python.preprocess(tiles)
    np.testing.assert_array_equal(nm, pm)
    np.testing.assert_array_equal(ni, pi)


def test_the_fused_kernel_runs_inside_the_compiled_model(fresh_bundle, data_dir):
    e = C.Engine(str(fresh_bundle.path))
    tiles = crc_tiles(data_dir, 4)
    before = C.fused_op_calls()
    (probs, _, _), valid = e.classify(tiles)
    assert C.fused_op_calls() == before + 1  # one batch, one call of the fused CPU kernel
    assert probs.shape == (4, 7) and valid.shape == (4,)


def test_classify_is_thread_safe(fresh_bundle, data_dir):
    e = C.Engine(str(fresh_bundle.path))
    tiles = crc_tiles(data_dir, 14)
    serial = [e.classify(tiles[i:i + 2])[0][0] for i in range(0, 14, 2)]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda i: e.classify(tiles[i:i + 2])[0][0], range(0, 14, 2)))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def _bundle_copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle.path, dst)
    return dst


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "model.pt2").write_bytes(b"not a zip"), "model.pt2: sha256 does not match"),
    (lambda b: (b / "weights.safetensors").unlink(), "weights.safetensors: listed in the manifest but missing"),
    (lambda b: (b / "manifest.json").write_text("{"), "not valid JSON"),
    (lambda b: _edit(b, lambda m: m.update(format_version=99)), "format_version 99"),
    (lambda b: _edit(b, lambda m: m["formats"]["aoti"]["isa"]["flags"].append("avx512_fp99")),
     "compiled for a CPU with avx512_fp99, which this CPU lacks"),
    (lambda b: _edit(b, lambda m: m["preprocessing"]["mask"].update(nuclei_threshold="otsu")), "supports fixed thresholds only"),
    (lambda b: _edit(b, lambda m: m["formats"].pop("aoti")), "has no AOTInductor package"),
    (lambda b: (b / "manifest.json").write_text((b / "manifest.json").read_text().replace('"tile_size": 224', '"tile_size": 112')),
     "changed after export"),
    (lambda b: _edit(b, lambda m: m.update(tile_size=112)), "compiled for 224 px tiles, but the manifest says 112"),
    (lambda b: (b / "manifest.sha256").unlink(), "manifest.sha256: missing"),
    (lambda b: _seal(b, '{"format": "saganet-bundle", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"), "nested more than 64"),
    (lambda b: _edit(b, lambda m: m.update(tile_size=1e300)), "'tile_size' must be a whole number"),
    (lambda b: _edit(b, lambda m: m["files"].update({"../x": "0" * 64})), "is not a plain name inside the bundle"),
    (lambda b: _edit(b, lambda m: m["preprocessing"].update(std=[0.2, 0.0, 0.2])), "std positive"),
])
def test_bad_bundles_are_refused_with_the_reason(fresh_bundle, tmp_path, damage, message):
    b = _bundle_copy(fresh_bundle, tmp_path)
    damage(b)
    with pytest.raises(ValueError, match=message):
        C.Engine(str(b))


def _seal(b: Path, text: str):
    """Write the manifest and reseal it (manifest.sha256), to reach the check under test."""
    from saganet.bundle import sha256_file

    (b / "manifest.json").write_text(text)
    (b / "manifest.sha256").write_text(sha256_file(b / "manifest.json"))


def _edit(b: Path, change):
    m = json.loads((b / "manifest.json").read_text())
    change(m)
    _seal(b, json.dumps(m))


def test_one_torch_release_rule_in_python_and_cpp(fresh_bundle, tmp_path):
    """A package runs only on the torch release (x.y.z) that compiled it; the local build tag does not count."""
    from saganet.bundle import load_bundle
    from saganet.engine import aoti_backend

    release = torch.__version__.split("+")[0]
    major, minor, patch = release.split(".")[:3]
    other = _bundle_copy(fresh_bundle, tmp_path)
    _edit(other, lambda m: m["formats"]["aoti"].update(torch=f"{major}.{minor}.{int(patch) + 1}+cpu"))
    assert "compiled with torch" in aoti_backend.unavailable(load_bundle(other))
    with pytest.raises(ValueError, match=f"compiled with torch {major}.{minor}.{int(patch) + 1}, this engine has torch {release}"):
        C.Engine(str(other))
    same = tmp_path / "same"
    shutil.copytree(fresh_bundle.path, same)
    _edit(same, lambda m: m["formats"]["aoti"].update(torch=f"{release}+cu999"))
    assert aoti_backend.unavailable(load_bundle(same)) is None
    assert C.Engine(str(same)).tile_size == fresh_bundle.tile_size


def test_wrong_inputs_are_refused(fresh_bundle):
    e = C.Engine(str(fresh_bundle.path))
    with pytest.raises(ValueError, match=r"\(N, 224, 224, 3\)"):
        e.classify(np.zeros((2, 100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 224, 224, 3\)"):
        e.classify(np.zeros((0, 224, 224, 3), np.uint8))
    with pytest.raises(ValueError, match="mask must be"):
        e.run(np.zeros((2, 3, 224, 224), np.float32), np.zeros((3, 1, 224, 224), np.float32))


def test_c_api_from_a_foreign_caller(fresh_bundle, data_dir):
    """The C API through ctypes, as a scanner written in another language would use it."""
    lib = ctypes.CDLL(str(Path(C.__file__).parent / "libsaganet_engine.so"))
    lib.saganet_engine_create.restype = ctypes.c_void_p
    lib.saganet_engine_create.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.saganet_last_error.restype = ctypes.c_char_p
    lib.saganet_engine_class_name.restype = ctypes.c_char_p
    lib.saganet_engine_class_name.argtypes = [ctypes.c_void_p, ctypes.c_int]
    for f in ("saganet_engine_tile_size", "saganet_engine_num_classes"):
        getattr(lib, f).argtypes = [ctypes.c_void_p]
    lib.saganet_engine_destroy.argtypes = [ctypes.c_void_p]
    lib.saganet_engine_classify.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                            ctypes.c_void_p, ctypes.c_void_p]

    assert lib.saganet_engine_create(b"/no/such/bundle", 0) is None
    assert b"no manifest.json" in lib.saganet_last_error()
    assert lib.saganet_engine_create(None, 0) is None and b"must not be NULL" in lib.saganet_last_error()

    e = lib.saganet_engine_create(str(fresh_bundle.path).encode(), 0)
    assert e, lib.saganet_last_error()
    try:
        assert lib.saganet_engine_tile_size(e) == 224 and lib.saganet_engine_num_classes(e) == 7
        assert lib.saganet_engine_class_name(e, 6) == b"TUM" and lib.saganet_engine_class_name(e, 7) is None
        tiles = np.ascontiguousarray(crc_tiles(data_dir, 3))
        probs, lengths, valid = np.zeros((3, 7), np.float32), np.zeros((3, 7), np.float32), np.zeros(3, np.float32)
        assert lib.saganet_engine_classify(e, tiles.ctypes.data, 3, probs.ctypes.data, lengths.ctypes.data,
                                           valid.ctypes.data) == 0
        (p, s, _), v = C.Engine(str(fresh_bundle.path)).classify(tiles)
        np.testing.assert_array_equal(probs, p)
        np.testing.assert_array_equal(lengths, s)
        np.testing.assert_array_equal(valid, v)
        assert lib.saganet_engine_classify(e, tiles.ctypes.data, 0, probs.ctypes.data, None, None) == 1
        assert b"n must be at least 1" in lib.saganet_last_error()
        assert lib.saganet_engine_classify(e, None, 3, probs.ctypes.data, None, None) == 1
    finally:
        lib.saganet_engine_destroy(e)


def _swap_for(kind: str, target: Path, elsewhere: Path) -> None:
    """Replace a bundle file by a link to its own copy outside the bundle, a link to /dev/zero, or a FIFO."""
    outside = elsewhere / f"outside-{target.name}"
    shutil.copy(target, outside)
    target.unlink()
    if kind == "link out":
        target.symlink_to(outside)
    elif kind == "link to /dev/zero":
        target.symlink_to("/dev/zero")
    else:
        os.mkfifo(target)


C_API_CREATE = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.saganet_engine_create.restype = ctypes.c_void_p
lib.saganet_engine_create.argtypes = [ctypes.c_char_p, ctypes.c_int]
lib.saganet_last_error.restype = ctypes.c_char_p
e = lib.saganet_engine_create(sys.argv[2].encode(), 0)
if e and len(sys.argv) > 3:  # then classify n tiles from a one-tile buffer: refused before any read
    lib.saganet_engine_classify.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 3
    buf = ctypes.create_string_buffer(224 * 224 * 3)
    probs = ctypes.create_string_buffer(7 * 4)
    status = lib.saganet_engine_classify(e, buf, int(sys.argv[3]), probs, None, None)
    print(status, lib.saganet_last_error().decode())
else:
    print("created" if e else "refused", lib.saganet_last_error().decode())
"""


def _c_api(*args, timeout=60):
    import subprocess
    import sys

    lib = str(Path(C.__file__).parent / "libsaganet_engine.so")
    return subprocess.run([sys.executable, "-c", C_API_CREATE, lib, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("kind", ["link out", "link to /dev/zero", "FIFO"])
@pytest.mark.parametrize("name", ["card.md", "weights.safetensors", "manifest.json"])
def test_bundle_files_must_be_regular_files_inside_the_bundle(fresh_bundle, tmp_path, kind, name):
    """Issue 13, items 5 and 6: a link leaving the bundle was followed and loaded; a FIFO or /dev/zero
    hung the C API. Python, the C++ engine and the C API (in a subprocess, so a hang is seen) refuse."""
    from saganet.bundle import BundleError, load_bundle

    b = _bundle_copy(fresh_bundle, tmp_path)
    _swap_for(kind, b / name, tmp_path)
    expected = "symbolic link" if kind.startswith("link") else "not a regular file"
    with pytest.raises(BundleError, match=expected):
        load_bundle(b)
    with pytest.raises(ValueError, match=expected):
        C.Engine(str(b))
    out = _c_api(b)  # a hang would raise TimeoutExpired
    assert out.returncode == 0 and out.stdout.startswith("refused") and expected in out.stdout, out


def test_c_api_refuses_tile_counts_that_overflow(fresh_bundle):
    """Issue 13, item 6: n = 2^54 wrapped the size arithmetic and segfaulted (2^40 said 'out of memory')."""
    for n in (2 ** 54, 2 ** 62, 2 ** 63 - 1):
        out = _c_api(fresh_bundle.path, n)
        assert out.returncode == 0 and out.stdout.startswith("1 ") and "more than this machine can address" in out.stdout, out


def test_one_libsaganet_whichever_is_loaded_first():
    """Issue 13, item 6: the engine's RUNPATH reached into the build tree for a second libsaganet, so
    saganet_last_error() read through the package's libsaganet.so.0 was always empty."""
    import subprocess
    import sys

    code = """
import ctypes, sys
d = sys.argv[1]
e = ctypes.CDLL(d + "/libsaganet_engine.so")  # the engine first, then libsaganet by its path
s = ctypes.CDLL(d + "/libsaganet.so.0")
e.saganet_engine_create.restype = ctypes.c_void_p
e.saganet_engine_create.argtypes = [ctypes.c_char_p, ctypes.c_int]
s.saganet_last_error.restype = ctypes.c_char_p
assert e.saganet_engine_create(b"/no/bundle", 0) is None
print(s.saganet_last_error().decode())
print(sorted({l.split()[-1] for l in open("/proc/self/maps") if "libsaganet.so" in l}))
"""
    out = subprocess.run([sys.executable, "-c", code, str(Path(C.__file__).parent)], capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    assert "no manifest.json" in out[0]
    assert len(eval(out[1])) == 1, out[1]


def test_a_package_of_another_tile_size_is_refused_everywhere(fresh_bundle, tmp_path, data_dir):
    """Issue 13, item 4: a 224 px model.pt2 in a 112 px bundle (hashes fixed up) segfaulted the aoti and
    native backends, `saganet predict` and the C API. Each now refuses it with the reason."""
    import subprocess
    import sys

    from saganet.bundle import sha256_file
    from saganet.engine import Engine

    b = _bundle_copy(fresh_bundle, tmp_path)
    _edit(b, lambda m: (m.update(tile_size=112), m["files"].update({"model.pt2": sha256_file(b / "model.pt2")})))
    message = "compiled for 224 px tiles, but the manifest says 112"
    for backend in ("aoti", "native"):
        with pytest.raises(ValueError, match=message):
            Engine(b, backend=backend)
    cli = subprocess.run([sys.executable, "-m", "saganet", "predict", str(b), str(data_dir / "wsi" / "cmu_small_region.svs"),
                          "--out", str(tmp_path / "out"), "--backend", "native"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and message in cli.stderr and "Traceback" not in cli.stderr, cli.stderr[-2000:]
    out = _c_api(b)
    assert out.returncode == 0 and out.stdout.startswith("refused") and message in out.stdout, out
