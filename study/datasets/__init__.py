"""Datasets behind one small interface: a name maps to a loader that returns a `Dataset`
(uint8 images, labels, class names, the official test split if there is one).

Every loader decodes its source once into a cached uint8 array (see `cache.py`); later runs
memory-map it. Add a dataset by writing a loader module and registering it in `LOADERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from study.config import DataConfig
from study.datasets.base import Dataset
from study.errors import UserError

Loader = Callable[[DataConfig, Path], Dataset]


def _digits(cfg: DataConfig, cache_dir: Path) -> Dataset:
    from study.datasets.digits import load

    return load(cfg, cache_dir)


def _imagefolder(cfg: DataConfig, cache_dir: Path) -> Dataset:
    from study.datasets.imagefolder import load

    return load(cfg, cache_dir)


def _tiny_imagenet(cfg: DataConfig, cache_dir: Path) -> Dataset:
    from study.datasets.tiny_imagenet import load

    return load(cfg, cache_dir)


def _imagenet(cfg: DataConfig, cache_dir: Path) -> Dataset:
    from study.datasets.imagenet import load

    return load(cfg, cache_dir)


def _cifar10(cfg: DataConfig, cache_dir: Path) -> Dataset:
    from study.datasets.cifar import load

    return load(cfg, cache_dir, "cifar10")


def _cifar100(cfg: DataConfig, cache_dir: Path) -> Dataset:
    from study.datasets.cifar import load

    return load(cfg, cache_dir, "cifar100")


def _text_recognition(cfg: DataConfig, cache_dir: Path) -> Dataset:
    from study.datasets.text_recognition import load

    return load(cfg, cache_dir)


LOADERS: dict[str, Loader] = {
    "digits": _digits,
    "imagefolder": _imagefolder,
    "tiny-imagenet": _tiny_imagenet,
    "imagenet": _imagenet,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "text-recognition": _text_recognition,
}


def check_name(name: str) -> None:
    """Refuse an unknown dataset name with the list of valid ones."""
    if name not in LOADERS:
        raise UserError(f"dataset {name!r} is unknown; valid: {', '.join(sorted(LOADERS))}")


def load_dataset(cfg: DataConfig, cache_dir: Path) -> Dataset:
    """Load the dataset named by ``cfg.dataset``, decoding it into the cache on first use."""
    check_name(cfg.dataset)
    return LOADERS[cfg.dataset](cfg, Path(cache_dir))


__all__ = ["Dataset", "LOADERS", "check_name", "load_dataset"]
