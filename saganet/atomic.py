"""Writes that are never seen half done: write a temporary file (or folder) beside the target, then
rename it over the target (atomic on POSIX), so an interrupted run leaves the old one or the new one."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def tmp_path(path) -> Path:
    """The temporary name beside `path` that every atomic write here uses."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def atomic_write(path, write) -> None:
    """Call write(tmp) (which may create a file or a folder), then rename tmp to path; tmp is
    removed if `write` fails."""
    path, tmp = Path(path), tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


class StreamedFile:
    """A text file written row by row under its temporary name; close(complete=True) renames it
    into place, close(complete=False) throws it away."""

    def __init__(self, path):
        self.path, self.tmp = Path(path), tmp_path(path)
        self.f = open(self.tmp, "w", newline="", encoding="utf-8")

    def close(self, complete: bool) -> None:
        self.f.close()
        if complete:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
