"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes): the default
dataset, so a study runs on a fresh machine without downloading anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from study.config import DataConfig
from study.datasets.base import Dataset
from study.datasets.cache import cache_key, load_or_decode
from study.datasets.decode import resize_uint8


def load(cfg: DataConfig, cache_dir: Path) -> Dataset:
    """Digits upscaled to ``cfg.image_size`` and made 3-channel."""
    key = cache_key({"dataset": "digits", "image_size": cfg.image_size})
    return load_or_decode(cache_dir, "digits", key, lambda: _decode(cfg.image_size))


def _decode(size: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    gray = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    images = np.stack([resize_uint8(np.repeat(g[:, :, None], 3, axis=2), size) for g in gray])
    return Dataset(
        name="digits",
        images=images,
        labels=bunch.target.astype(np.int64),
        class_names=[str(c) for c in bunch.target_names],
        hflip=False,  # a mirrored 3 is not a 3
    )
