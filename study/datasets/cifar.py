"""CIFAR-10 and CIFAR-100, read by torchvision's own classes from torchvision's on-disk layout
(``<root>/cifar-10-batches-py/`` or ``<root>/cifar-100-python/``: pickled batches and a meta
file). The official test batch is the study's test split.

``data.root`` names an existing copy (torchvision's root, or the batches folder itself). Without
it the copy is downloaded by torchvision into ``<cache_dir>/downloads`` once.

torchvision checks the MD5 of every file each time it opens a copy. Here that check runs once,
when the copy is decoded into the cache, and a mismatch is a warning rather than a refusal: a
truncated or garbled file still fails to unpickle and is refused, while a copy re-packed in the
same format (or the small copies the tests write) can be used.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np

from study.config import DataConfig
from study.datasets.base import Dataset
from study.datasets.cache import cache_key, load_or_decode
from study.datasets.decode import resize_uint8
from study.datasets.imagefolder import source_fingerprint
from study.errors import UserError

TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _torchvision_class(name: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]


def _without_checksums(cls):
    """torchvision's reader with its per-open MD5 checks off (files must still exist): with an
    MD5 of None, torchvision's check_integrity tests presence only."""
    return type(
        cls.__name__,
        (cls,),
        {
            "train_list": [[f, None] for f, _ in cls.train_list],
            "test_list": [[f, None] for f, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


def load(cfg: DataConfig, cache_dir: Path, name: str) -> Dataset:
    """CIFAR-10 (``name='cifar10'``) or CIFAR-100 at ``cfg.image_size``."""
    cls = _torchvision_class(name)
    root = _locate(cls, name, cfg.root, Path(cache_dir))
    files = [root / cls.base_folder / f for f in _file_names(cls)]
    key = cache_key(
        {
            "dataset": name,
            "root": str(root.resolve()),
            "files": source_fingerprint({"": files}, root),
            "image_size": cfg.image_size,
        }
    )
    return load_or_decode(cache_dir, name, key, lambda: _decode(cls, name, root, cfg.image_size))


def _locate(cls, name: str, data_root: str, cache_dir: Path) -> Path:
    """torchvision's root holding the copy: the given one, or a download into the cache."""
    layout = (
        f"torchvision's layout, <root>/{cls.base_folder}/ with {', '.join(f for f, _ in cls.train_list[:2])}, …, "
        f"{cls.meta['filename']}"
    )
    if data_root:
        root = Path(data_root)
        if root.name == cls.base_folder:  # the batches folder itself was given
            root = root.parent
        missing = _missing(cls, root)
        if missing:
            raise UserError(
                f"data.root {data_root!r} holds no {TITLES[name]} copy ({cls.base_folder}/{missing[0]} is missing); "
                f"expected {layout}, or leave data.root empty to download it"
            )
        return root
    root = cache_dir / "downloads"
    if _missing(cls, root):
        try:
            cls(root=str(root), train=True, download=True)  # torchvision downloads, checks and unpacks
        except (URLError, OSError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(
                f"could not download {TITLES[name]} from {cls.url} into {root} ({reason}); "
                f"download and unpack it by hand and pass --data-root DIR ({layout})"
            ) from None
    return root


def _file_names(cls) -> list[str]:
    """The files of torchvision's layout: the batches, then the meta file."""
    return [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def _missing(cls, root: Path) -> list[str]:
    return [f for f in _file_names(cls) if not (root / cls.base_folder / f).is_file()]


def _decode(cls, name: str, root: Path, size: int) -> Dataset:
    reader = _without_checksums(cls)
    try:
        train, test = reader(root=str(root), train=True), reader(root=str(root), train=False)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, OSError, RuntimeError) as exc:
        raise UserError(
            f"{TITLES[name]} copy in {root / cls.base_folder} could not be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'truncated'}); "
            "delete it and download it again"
        ) from None
    images = np.concatenate([train.data, test.data])
    if size != images.shape[1]:
        images = np.stack([resize_uint8(img, size) for img in images])
    labels = np.asarray(train.targets + test.targets, dtype=np.int64)
    return Dataset(
        name,
        images,
        labels,
        list(train.classes),
        test_mask=np.r_[np.zeros(len(train.data), bool), np.ones(len(test.data), bool)],
        warnings=_checksum_warnings(cls, name, root),
    )


def _checksum_warnings(cls, name: str, root: Path) -> list[str]:
    from torchvision.datasets.utils import check_integrity

    published = dict(cls.train_list + cls.test_list) | {cls.meta["filename"]: cls.meta["md5"]}
    differ = [f for f in _file_names(cls) if not check_integrity(os.path.join(root, cls.base_folder, f), published[f])]
    if not differ:
        return []
    return [
        f"{TITLES[name]} file(s) {', '.join(differ)} in {root / cls.base_folder} differ from the published checksums; "
        "results are not comparable with the official dataset unless this copy is intentional"
    ]
