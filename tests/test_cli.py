"""Arguments are checked at the parser, with messages in the user's terms (issue 13, item 10)."""
import pytest

from saganet.cli import main

BAD = [
    (["train", "d", "--out", "o", "--batch-size", "0"], "--batch-size: must be at least 2, got 0"),
    (["train", "d", "--out", "o", "--image-size", "-5"], "--image-size: must be at least 16, got -5"),
    (["train", "d", "--out", "o", "--val-fraction", "1.5"], "--val-fraction: must be in [0, 1), got 1.5"),
    (["train", "d", "--out", "o", "--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["train", "d", "--out", "o", "--lr", "nan"], "--lr: must be in (0, 10], got nan"),
    (["train", "d", "--out", "o", "--shots", "many"], "--shots: must be a whole number, got 'many'"),
    (["study", "d", "--out", "o", "--repeats", "0"], "--repeats: must be at least 1, got 0"),
    (["study", "d", "--out", "o", "--unlabelled-fraction", "1"], "--unlabelled-fraction: must be in (0, 1), got 1"),
    (["pretrain", "s", "--out", "o", "--batch-size", "1"], "--batch-size: must be at least 2, got 1"),
    (["export", "r", "--out", "o", "--mpp", "1000"], "--mpp: must be in [0.05, 100], got 1000"),
    (["export", "r", "--out", "o", "--tile-size", "0"], "--tile-size: must be at least 16, got 0"),
    (["predict", "b", "s", "--out", "o", "--min-tissue", "2"], "--min-tissue: must be in [0, 1], got 2"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:1] + a[3:]) for a, _ in BAD])
def test_bad_arguments_are_refused_at_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def _options(parser):
    """(subcommand, option) for every option of every subcommand."""
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                yield name, action


def test_every_option_has_help_and_choices_come_from_the_registries():
    from saganet import config
    from saganet.cli import build_parser

    options = list(_options(build_parser()))
    assert len(options) > 60
    assert not [f"{cmd} {a.option_strings[0]}" for cmd, a in options if not a.help]
    choices = {(cmd, a.option_strings[0]): list(a.choices) for cmd, a in options if a.choices}
    assert choices[("train", "--variant")] == list(config.TRAIN_VARIANTS)
    defaults = {(cmd, a.option_strings[0]): a.default for cmd, a in options}
    assert defaults[("train", "--variant")] == config.TRAIN_DEFAULT_VARIANT == "auto"  # issue 12's safe default
    assert choices[("train", "--auto-candidates")] == list(config.VARIANTS)
    assert choices[("train", "--backbone")] == list(config.BACKBONES)
    assert choices[("predict", "--backend")] == ["auto", *config.BACKENDS]
    assert choices[("export", "--precision")] == list(config.PRECISIONS)
    assert choices[("pretrain", "--method")] == list(config.PRETRAIN_METHODS)
    assert choices[("study", "--variants")] == list(config.VARIANT_NAMES)


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "draws per shot count (default: 5)" in out and "(default: 20)" in out
    assert "torch threads (0 = torch's default) (default: 0)" in out  # a default of 0 is shown, not taken for "none"


def test_help_and_import_do_not_load_torch():
    """`saganet --help` and `import saganet` stay light: torch, FastAPI and ONNX load only for commands that need them."""
    import subprocess
    import sys

    code = ("import sys, saganet\nfrom saganet.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'fastapi', 'onnx', 'onnxruntime', 'skimage', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_serve_is_a_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "usage: saganet serve" in capsys.readouterr().out


def test_engine_is_importable_from_the_package_root():
    import saganet
    from saganet.engine import Engine

    assert saganet.Engine is Engine and saganet.MaskConfig().tissue_od > 0


def test_one_version_everywhere():
    """saganet/__init__.py holds it; the package metadata and the native library are built from it."""
    import importlib.metadata

    import saganet

    C = pytest.importorskip("saganet._C")
    assert importlib.metadata.version("saganet") == saganet.__version__ == C.version()
