"""A folder of class subfolders (``root/<class>/**/<image>``), as torchvision's ImageFolder
reads it, optionally with a separate test folder of the same classes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from study.config import DataConfig
from study.datasets.base import Dataset
from study.datasets.cache import cache_key, load_or_decode
from study.datasets.decode import decode_files
from study.errors import UserError


def list_class_files(root: Path, what: str = "data.root") -> dict[str, list[Path]]:
    """Map each class folder under ``root`` to its files (recursively, hidden files skipped)."""
    if not root.exists():
        raise UserError(f"{what} {str(root)!r} does not exist; expected a folder with one subfolder per class")
    if not root.is_dir():
        raise UserError(f"{what} {str(root)!r} is not a folder; expected a folder with one subfolder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{what} {str(root)!r} has no class folders; expected {root}/<class name>/<image files>")
    files: dict[str, list[Path]] = {}
    for name in classes:
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
        files[name] = found
    return files


def source_fingerprint(files: dict[str, list[Path]], root: Path) -> list:
    """Names, sizes and modification times of every source file: cheap to compute, and it
    changes whenever a file is added, removed, renamed or rewritten."""
    out = []
    for _name, paths in files.items():
        for p in paths:
            st = p.stat()
            out.append([str(p.relative_to(root)), st.st_size, st.st_mtime_ns])
    return out


def decode_class_files(
    files: dict[str, list[Path]], class_names: list[str], size: int, where: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every file, label it by its class folder; refuse a class with no readable image."""
    index = {name: i for i, name in enumerate(class_names)}
    paths = [p for name in files for p in files[name]]
    labels = np.array([index[name] for name in files for _ in files[name]], dtype=np.int64)
    images, ok, skipped = decode_files(paths, size)
    labels = labels[ok]
    for name in files:
        if not np.any(labels == index[name]):
            n = len(files[name])
            raise UserError(
                f"class folder {str(Path(where) / name)!r} has no readable image ({n} file(s), none decodable); "
                "add images or remove the folder"
            )
    return images, labels, skipped


def load(cfg: DataConfig, cache_dir: Path) -> Dataset:
    """Images under ``cfg.root`` labelled by class folder; ``cfg.test_root`` (optional) is the
    official test split and must use the same class names."""
    if not cfg.root:
        raise UserError(
            "dataset 'imagefolder' needs data.root (--data-root DIR): a folder with one subfolder per class"
        )
    return load_folders(
        "imagefolder", Path(cfg.root), Path(cfg.test_root) if cfg.test_root else None, cfg.image_size, cache_dir
    )


def load_folders(
    name: str, root: Path, test_root: Path | None, size: int, cache_dir: Path, hflip: bool = True
) -> Dataset:
    """A class-folder tree at ``root`` and optionally a test tree of the same classes, decoded
    once into the cache as dataset ``name``."""
    train_files = list_class_files(root)
    class_names = list(train_files)
    test_files: dict[str, list[Path]] = {}
    if test_root is not None:
        test_files = list_class_files(test_root, "data.test_root")
        extra = sorted(set(test_files) - set(class_names))
        if extra:
            raise UserError(
                f"data.test_root has class folder {extra[0]!r} that data.root lacks; classes: {', '.join(class_names)}"
            )
    key = cache_key(
        {
            "dataset": name,
            "root": str(root.resolve()),
            "files": source_fingerprint(train_files, root),
            "test_root": str(test_root.resolve()) if test_root else "",
            "test_files": source_fingerprint(test_files, test_root) if test_files else [],
            "image_size": size,
        }
    )

    def decode() -> Dataset:
        images, labels, skipped = decode_class_files(train_files, class_names, size, str(root))
        test_mask = None
        if test_files:
            t_images, t_labels, t_skipped = _decode_test(test_files, class_names, size)
            test_mask = np.r_[np.zeros(len(labels), bool), np.ones(len(t_labels), bool)]
            images = np.concatenate([images, t_images])
            labels = np.concatenate([labels, t_labels])
            skipped += t_skipped
        return Dataset(name, images, labels, class_names, test_mask=test_mask, hflip=hflip, skipped=skipped)

    return load_or_decode(cache_dir, name, key, decode)


def _decode_test(
    files: dict[str, list[Path]], class_names: list[str], size: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    # A test folder may lack a class (a small test set); it is not refused for that.
    index = {name: i for i, name in enumerate(class_names)}
    paths = [p for name in files for p in files[name]]
    labels = np.array([index[name] for name in files for _ in files[name]], dtype=np.int64)
    images, ok, skipped = decode_files(paths, size)
    if not ok.any():
        raise UserError("data.test_root has no readable image; add images or leave test_root empty")
    return images, labels[ok], skipped
