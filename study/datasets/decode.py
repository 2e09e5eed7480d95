"""Decoding image files into fixed-size uint8 RGB arrays, in parallel.

This runs once per dataset (the result is cached), so clarity beats cleverness here; JPEG
draft mode lets libjpeg decode large photos at a reduced scale directly. ``decode_chunk_into``
is the unit of the cache's resumable decode (``cache.load_or_decode_files``): it writes its
rows straight into the preallocated memory-mapped cache file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from PIL import Image, UnidentifiedImageError

from study.splits import content_hashes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_CHUNK = 512  # files per parallel task: large enough to amortise process start-up


def resize_uint8(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to (size, size, 3), antialiased."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def decode_file(path: str | Path, size: int) -> np.ndarray:
    """Decode one image file (any mode: grayscale, palette, RGBA, CMYK) to (size, size, 3) uint8.

    Raises OSError/ValueError for a corrupt, truncated or non-image file.
    """
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # decode at >= size, up to 8x faster for big photos
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Transparent pixels become white rather than whatever colour they hide.
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def _decode_chunk(paths: Sequence[str], size: int) -> list[np.ndarray | str]:
    out: list[np.ndarray | str] = []
    for p in paths:
        try:
            out.append(decode_file(p, size))
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            out.append(f"{p}: {type(exc).__name__}: {exc}".splitlines()[0])
    return out


def decode_files(paths: Sequence[str | Path], size: int, jobs: int = -1) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode ``paths`` to an (n_ok, size, size, 3) array.

    Returns (images, ok_mask over ``paths``, skipped messages). Files that fail to decode are
    skipped, not fatal: the caller decides what a class with no readable image means.
    """
    paths = [str(p) for p in paths]
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    if len(chunks) <= 1:
        results = [_decode_chunk(c, size) for c in chunks]
    else:
        results = Parallel(n_jobs=jobs)(delayed(_decode_chunk)(c, size) for c in chunks)
    flat = [r for chunk in results for r in chunk]
    ok = np.array([not isinstance(r, str) for r in flat], dtype=bool)
    images = [r for r in flat if not isinstance(r, str)]
    skipped = [r for r in flat if isinstance(r, str)]
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, ok, skipped


def decode_chunk_into(images_path: str, hashes_path: str, paths: Sequence[str], start: int, size: int) -> list[str]:
    """Decode ``paths`` into rows ``start...`` of the memory-mapped ``images_path`` (and each
    row's pixel digest into ``hashes_path``), flushed to the file before returning. Returns
    "<row>\t<message>" for each file that could not be decoded (its row stays zero)."""
    images = np.load(images_path, mmap_mode="r+")
    hashes = np.load(hashes_path, mmap_mode="r+")
    skipped = []
    for row, result in enumerate(_decode_chunk(paths, size), start):
        if isinstance(result, str):
            skipped.append(f"{row}\t{result}")
            continue
        images[row] = result
        hashes[row] = content_hashes(result[None])[0]
    images.flush()
    hashes.flush()
    return skipped
