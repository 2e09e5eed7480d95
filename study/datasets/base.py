"""The one interface every dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    """Decoded images of one dataset.

    images: uint8 array (N, H, W, 3), usually memory-mapped from the cache.
    labels: int64 array (N,), values in [0, len(class_names)).
    test_mask: bool array (N,) marking the official held-out split, or None when the dataset
        has none (then the harness draws a fixed stratified test split).
    hflip: whether a horizontal flip keeps an image's label (False for digits and text).
    skipped: source files that could not be decoded, with the reason, reported as a warning.
    warnings: other things about the source a researcher should know (e.g. a file whose
        checksum differs from the published one), reported before training.
    key: the cache key: it changes whenever the source files or the decode settings change.
    names: each image's source file (bytes, UTF-8) under its split's folder, e.g.
        b"n01440764/n01440764_10026.JPEG", for subset lists; None for datasets not read from files.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    test_mask: np.ndarray | None = None
    hflip: bool = True
    skipped: list[str] = field(default_factory=list)
    key: str = ""
    warnings: list[str] = field(default_factory=list)
    names: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
