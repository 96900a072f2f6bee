"""Writes that are never seen half done: write a temporary file beside the target, then rename it
over the target (atomic on POSIX), so an interrupted run leaves the old file or the new one."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path, write) -> None:
    """Call write(tmp_path), then rename tmp_path to path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))
