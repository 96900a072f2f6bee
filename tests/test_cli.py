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
