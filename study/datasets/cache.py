"""Decode once, memory-map afterwards.

A dataset is decoded into ``<cache_dir>/<name>-<key>/`` holding ``images.npy`` (uint8 N,H,W,3),
``labels.npy``, optionally ``test_mask.npy``, and ``meta.json``. The key hashes everything the
decoded pixels depend on (source file names, sizes and modification times, decode settings),
so a changed folder or setting is decoded again, never served stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from study.datasets.base import Dataset

# Bump when decoding changes in a way that alters pixels, to invalidate every cache.
DECODE_VERSION = 1


def cache_key(parts: Any) -> str:
    """A short stable hash of JSON-serialisable ``parts``."""
    blob = json.dumps({"v": DECODE_VERSION, "parts": parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_or_decode(cache_dir: Path, name: str, key: str, decode: Callable[[], Dataset]) -> Dataset:
    """Return the cached dataset for ``key``, calling ``decode`` only when it is not cached."""
    folder = Path(cache_dir) / f"{name}-{key}"
    if not (folder / "meta.json").is_file():
        dataset = decode()
        _write(folder, dataset)
    return _read(folder, key)


def _write(folder: Path, dataset: Dataset) -> None:
    # Written into a temporary sibling and renamed, so a crash or a parallel writer never
    # leaves a half-written cache that a later run would trust.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        np.save(tmp / "images.npy", np.ascontiguousarray(dataset.images, dtype=np.uint8))
        np.save(tmp / "labels.npy", np.asarray(dataset.labels, dtype=np.int64))
        if dataset.test_mask is not None:
            np.save(tmp / "test_mask.npy", np.asarray(dataset.test_mask, dtype=bool))
        meta = {
            "name": dataset.name,
            "class_names": dataset.class_names,
            "hflip": dataset.hflip,
            "skipped": dataset.skipped,
            "warnings": dataset.warnings,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process wrote the same key first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read(folder: Path, key: str) -> Dataset:
    meta = json.loads((folder / "meta.json").read_text())
    mask_path = folder / "test_mask.npy"
    return Dataset(
        name=meta["name"],
        images=np.load(folder / "images.npy", mmap_mode="r"),
        labels=np.load(folder / "labels.npy"),
        class_names=list(meta["class_names"]),
        test_mask=np.load(mask_path) if mask_path.exists() else None,
        hflip=bool(meta["hflip"]),
        skipped=list(meta["skipped"]),
        key=key,
        warnings=list(meta.get("warnings", [])),
    )
