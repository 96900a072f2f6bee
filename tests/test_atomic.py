"""The one atomic-write helper: files, folders and streamed files are seen complete or not at all."""
import pytest

from saganet.atomic import StreamedFile, atomic_write, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    def half_written(tmp):
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_written)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_folder_is_renamed_into_place_whole_or_not_at_all(tmp_path):
    target = tmp_path / "bundle"

    def failing(folder):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x")
        raise OSError("connection lost")

    with pytest.raises(OSError, match="connection lost"):
        atomic_write(target, failing)
    assert not list(tmp_path.iterdir())  # neither the target nor the temporary folder

    def complete(folder):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x")

    atomic_write(target, complete)
    assert (target / "model.onnx").read_bytes() == b"x" and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_streamed_file_appears_only_when_complete(tmp_path):
    table = StreamedFile(tmp_path / "tiles.csv")
    table.f.write("x,y\n")
    assert not (tmp_path / "tiles.csv").exists()
    table.close(complete=False)
    assert not list(tmp_path.iterdir())
    table = StreamedFile(tmp_path / "tiles.csv")
    table.f.write("x,y\n")
    table.close(complete=True)
    assert (tmp_path / "tiles.csv").read_text() == "x,y\n" and sorted(p.name for p in tmp_path.iterdir()) == ["tiles.csv"]
