"""A folder of class subfolders (``root/<class>/**/<image>``), as torchvision's ImageFolder
reads it, optionally with a separate test folder of the same classes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from study.config import DataConfig
from study.datasets.base import Dataset
from study.datasets.cache import FilePlan, cache_key, load_or_decode_files
from study.errors import UserError


def list_class_files(root: Path, what: str = "data.root") -> dict[str, list[Path]]:
    """Map each class folder under ``root`` to its files (recursively, hidden files skipped)."""
    if not root.exists():
        raise UserError(f"{what} {str(root)!r} does not exist; expected a folder with one subfolder per class")
    if not root.is_dir():
        raise UserError(f"{what} {str(root)!r} is not a folder; expected a folder with one subfolder per class")
    classes = class_folders(root, what)
    files: dict[str, list[Path]] = {}
    for name in classes:
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
        files[name] = found
    return files


def class_folders(root: Path, what: str = "data.root") -> list[str]:
    """The class folders under ``root``, sorted; refuses none, and a training folder (not a test
    folder, which may lack classes) with only one: a classifier needs two classes."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{what} {str(root)!r} has no class folders; expected {root}/<class name>/<image files>")
    if len(classes) == 1 and what != "data.test_root":
        raise UserError(f"{what} has 1 class folder ({classes[0]!r}); a classifier needs at least 2")
    return classes


def check_classes(root: Path) -> None:
    """Refuse a training folder without two class folders, before anything is decoded."""
    if root.is_dir():  # a missing folder is refused with its own message when the data loads
        class_folders(root)


def source_fingerprint(files: dict[str, list[Path]], root: Path) -> list:
    """Names, sizes and modification times of every source file: cheap to compute, and it
    changes whenever a file is added, removed, renamed or rewritten."""
    out = []
    for _name, paths in files.items():
        for p in paths:
            st = p.stat()
            out.append([str(p.relative_to(root)), st.st_size, st.st_mtime_ns])
    return out


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

    def plan() -> FilePlan:
        index = {c: i for i, c in enumerate(class_names)}
        paths, labels, names = flatten(train_files, index, root)
        test = None
        if test_files:
            t_paths, t_labels, t_names = flatten(test_files, index, test_root)
            test = np.r_[np.zeros(len(paths), bool), np.ones(len(t_paths), bool)]
            paths, labels, names = paths + t_paths, np.r_[labels, t_labels], names + t_names
        return FilePlan(
            name, paths, labels, class_names, names, test=test, hflip=hflip, check=require_images(train_files, root)
        )

    return load_or_decode_files(cache_dir, name, key, plan, size)


def flatten(
    files: dict[str, list[Path]], index: dict[str, int], root: Path
) -> tuple[list[Path], np.ndarray, list[str]]:
    """(paths, labels, names under ``root``) of class-folder ``files``, in class order."""
    paths = [p for name in files for p in files[name]]
    labels = np.array([index[name] for name in files for _ in files[name]], dtype=np.int64)
    return paths, labels, [p.relative_to(root).as_posix() for p in paths]


def require_images(train_files: dict[str, list[Path]], where: Path):
    """A ``FilePlan.check`` refusing a training class with no readable image, and a test split
    with none at all (a test folder may lack a class: a small test set is not refused for that)."""
    class_names = list(train_files)

    def check(labels: np.ndarray, test: np.ndarray | None) -> None:
        train = labels if test is None else labels[~test]
        counts = np.bincount(train, minlength=len(class_names))
        for c in np.flatnonzero(counts == 0):
            name, n = class_names[c], len(train_files[class_names[c]])
            raise UserError(
                f"class folder {str(Path(where) / name)!r} has no readable image ({n} file(s), none decodable); "
                "add images or remove the folder"
            )
        if test is not None and not test.any():
            raise UserError("data.test_root has no readable image; add images or leave test_root empty")

    return check
