"""Unlabelled sources for semi-supervised training: images (whole) and slides (tissue tiles).

Sources are paths, found and read the way `saganet pretrain` reads them (`pretrain.find_sources`,
`pretrain.build_tile_bank`), so anything pretraining takes, training with --unlabelled takes. A
path carries no label, so none can leak: the study hands its unlabelled pool over as paths only.
"""
from __future__ import annotations

import numpy as np

from .data import ImageLoadError, load_image
from .config import PretrainConfig
from .pretrain import build_tile_bank, find_sources


def load_unlabelled(sources, skip_bad: bool = False, tile_size: int = 128, max_slide_tiles: int = 2000,
                    log=print) -> tuple[list[np.ndarray], list[dict]]:
    """-> (uint8 RGB images, skipped [{path, error}]). Images are kept whole; slides give up to
    `max_slide_tiles` tissue tiles of `tile_size` px. Without skip_bad the first source that cannot be
    read raises ValueError naming it."""
    images, skipped, slides = [], [], []

    def bad(path, error):
        if not skip_bad:
            raise ValueError(f"unlabelled source {error} (use --skip-bad to skip it)")
        skipped.append({"path": str(path), "error": str(error)})
        log(f"skipping unlabelled source {error}")

    for source in sources:
        try:
            found = find_sources([source])
        except (FileNotFoundError, ValueError) as e:
            bad(source, e)
            continue
        for path, kind, _ in found:
            if kind == "slide":
                slides.append(path)
                continue
            try:
                images.append(load_image(path))
            except ImageLoadError as e:
                bad(path, e)
    if slides:
        try:
            bank, _, slide_skipped = build_tile_bank(
                slides, PretrainConfig(tile_size=tile_size, max_tiles=max_slide_tiles), log=log, skip_bad=skip_bad)
        except ValueError as e:
            if not skip_bad:
                raise ValueError(f"{e} (use --skip-bad to skip it)") from None
            bank, slide_skipped = [], [{"path": ", ".join(slides), "error": str(e)}]
        images.extend(bank)
        skipped.extend({"path": s["path"], "error": s["error"]} for s in slide_skipped)
    if not images:
        raise ValueError(f"no unlabelled image could be read from {[str(s) for s in sources]}")
    return images, skipped
