"""Labelled image sets: ImageFolder trees and CSV manifests, image loading with clear errors."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
# Largest image we decode (pixels); larger ones are refused as possible decompression bombs.
MAX_IMAGE_PIXELS = 64_000_000


class ImageLoadError(ValueError):
    """An image that cannot be used; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class Sample:
    path: str
    label: str
    patient: str = ""


def load_image(path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image as uint8 RGB (H, W, 3).

    Greyscale, palette, CMYK and 16-bit images are converted; transparency is flattened onto white
    (slide background). Anything PIL cannot decode, a truncated file, or more than `max_pixels`
    pixels raises ImageLoadError naming the file.
    """
    path = Path(path)
    try:
        # Image.open reads only the header: the size check runs before any pixel is decoded.
        # (PIL's own bomb check, a process-wide setting, stays as a backstop at its default.)
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise ImageLoadError(path, f"{im.width}x{im.height} pixels exceeds the limit of {max_pixels}")
            im.load()
            return to_rgb(im, path)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(path, f"too large, refused as a possible decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(path, "not an image PIL can identify (corrupt or unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(path, f"cannot decode image ({e}); the file may be truncated or corrupt") from None


def to_rgb(im: Image.Image, path) -> np.ndarray:
    """uint8 RGB of a decoded image: 16-bit scaled (not clipped), transparency onto white (glass)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im).astype(np.float64)
        hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0  # 32-bit "I" may hold 8-bit data
        g = np.clip(a / hi * 255 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"), dtype=np.uint8).copy()
    if mode in ("L", "P", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    raise ImageLoadError(path, f"unsupported image mode {mode!r}")


def load_mask_png(path, shape: tuple[int, int]) -> np.ndarray:
    """A user-supplied valid-area mask: a PNG whose non-zero pixels are valid, same size as its image."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            m = np.asarray(im.convert("L")) > 127
    except FileNotFoundError:
        raise ImageLoadError(path, "mask file not found") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        raise ImageLoadError(path, f"cannot read mask ({e})") from None
    if m.shape != tuple(shape):
        raise ImageLoadError(path, f"mask is {m.shape[1]}x{m.shape[0]} but its image is {shape[1]}x{shape[0]}")
    return m


def read_manifest(csv_path) -> list[Sample]:
    """Rows `path,label[,patient]`; paths are relative to the manifest's folder."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                raise DatasetError(f"{csv_path}: header must have columns 'path,label[,patient]', got {reader.fieldnames}")
            samples = []
            for i, row in enumerate(reader, start=2):
                if not row.get("path") or not row.get("label"):
                    raise DatasetError(f"{csv_path}, line {i}: empty 'path' or 'label' field")
                p = Path(row["path"])
                samples.append(Sample(str(p if p.is_absolute() else base / p), row["label"].strip(), (row.get("patient") or "").strip()))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{csv_path}: not UTF-8 text ({e})") from None
    if not samples:
        raise DatasetError(f"{csv_path}: no rows")
    return samples


def scan_image_folder(root) -> list[Sample]:
    root = Path(root)
    samples, empty = [], []
    for cls in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        found = [Sample(str(f), cls.name) for f in sorted(cls.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
        samples += found
        if not found:
            empty.append(cls.name)
    if samples and empty:  # a class the model would silently not have
        raise DatasetError(f"{root}: class folder(s) {', '.join(empty)} hold no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                           f"add images or remove the folder(s)")
    if not samples:
        raise DatasetError(f"{root}: no images found in class sub-folders (expected {root}/<class>/<image>)")
    return samples


def load_dataset(source) -> tuple[list[Sample], list[str]]:
    """A manifest CSV, a folder holding `manifest.csv`, or an ImageFolder tree -> samples, class names."""
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"{source}: no such file or folder")
    if source.is_file():
        samples = read_manifest(source)
    elif (source / "manifest.csv").is_file():
        samples = read_manifest(source / "manifest.csv")
    else:
        samples = scan_image_folder(source)
    classes = sorted({s.label for s in samples})
    if len(classes) < 2:
        raise DatasetError(f"{source}: need at least two classes, found {classes}")
    return samples, classes


def load_images(samples: list[Sample], skip_bad: bool = False, log=print) -> tuple[list[np.ndarray], list[Sample], list[str]]:
    """Decode every sample. With skip_bad, unreadable files are reported and left out."""
    images, kept, bad = [], [], []
    for s in samples:
        try:
            images.append(load_image(s.path))
            kept.append(s)
        except ImageLoadError as e:
            if not skip_bad:
                raise
            bad.append(str(e))
            log(f"skipping {e}")
    return images, kept, bad


def user_masks(samples: list[Sample], images: list[np.ndarray], data, mask_dir) -> list[np.ndarray]:
    """Masks supplied by the user: <mask_dir>/<path relative to DATA>.png, one per image."""
    root = Path(data) if Path(data).is_dir() else Path(data).parent
    return [load_mask_png(Path(mask_dir) / Path(os.path.relpath(s.path, root)).with_suffix(".png"), im.shape[:2])
            for s, im in zip(samples, images)]
