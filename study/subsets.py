"""Subset lists: a training-set size whose subset is exactly the images a file names, the same
for every seed (ImageNet's published 1% and 10% label lists: one file name a line, e.g.
``n01440764_10026.JPEG``).

A line names an image by its file name, or by its path under the training folder
(``n01440764/n01440764_10026.JPEG``) where file names repeat across classes. Listed images are
kept out of the harness's test and validation draws, so every one of them can train.

The published ImageNet lists ship with the package (``study/data/imagenet_subsets/``, with their
licence and origin) and are named ``imagenet-1pct`` and ``imagenet-10pct`` wherever a list's path
is accepted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from study.errors import UserError

KIND = "list"  # Cell.size_kind of a subset list; its size_value is the list's position in subset_lists
# The published lists shipped with the package, by the names a config or --subset-list gives them.
PUBLISHED = {"imagenet-1pct": "1percent.txt", "imagenet-10pct": "10percent.txt"}
PUBLISHED_DIR = Path(__file__).resolve().parent / "data" / "imagenet_subsets"


def list_path(spec: str | Path) -> Path:
    """The file a subset list names: a published list's shipped file, or the path given."""
    name = str(spec)
    return PUBLISHED_DIR / PUBLISHED[name] if name in PUBLISHED else Path(spec)


def read_list(path: str | Path) -> list[str]:
    """The image names of a subset list, once each, in file order (blank lines and # comments skipped)."""
    p = list_path(path)
    if not p.is_file():
        if str(path) in PUBLISHED:  # an install without its package data
            raise UserError(f"subset list {str(path)!r} is missing from this install ({p}); reinstall the package")
        published = ", ".join(PUBLISHED)
        raise UserError(
            f"subset list {str(p)!r} does not exist; give a file with one training image name a line, or a "
            f"published list: {published}"
        )
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"subset list {str(p)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    names = list(dict.fromkeys(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")))
    if not names:
        raise UserError(f"subset list {str(p)!r} names no image; give one training image name a line")
    return names


def list_name(path: str | Path) -> str:
    """How results and the report name a list: a published list's name, else its file name."""
    return str(path) if str(path) in PUBLISHED else Path(path).name


def list_sha256(path: str | Path) -> str:
    """The sha256 of a list's file, byte for byte: what its publisher gives to check a copy."""
    return hashlib.sha256(list_path(path).read_bytes()).hexdigest()


def list_digest(path: str | Path) -> str:
    """What the list selects, for the study's fingerprint: its names, order and layout aside."""
    return hashlib.sha256("\n".join(sorted(read_list(path))).encode()).hexdigest()[:32]


def resolve(path: str | Path, names: np.ndarray | None, train_side: np.ndarray) -> np.ndarray:
    """Dataset indices (sorted) of the images ``path`` lists, each looked up among ``train_side``
    (the dataset indices that may train). Refuses a name that is not among them, or that names
    more than one image."""
    if names is None:
        raise UserError(
            f"subset list {str(path)!r} needs the images' file names, which this dataset's cache does not keep (a "
            "dataset not read from files, or a cache decoded by an older version: delete it to decode again)"
        )
    by_path: dict[str, int] = {}
    by_file: dict[str, int] = {}  # -1: the file name repeats
    for i in train_side:
        rel = names[i].decode()
        by_path[rel] = int(i)
        base = rel.rsplit("/", 1)[-1]
        by_file[base] = -1 if base in by_file else int(i)
    out = []
    for name in read_list(path):
        index = by_path.get(name, by_file.get(name)) if "/" in name else by_file.get(name)
        if index is None:
            raise UserError(
                f"subset list {str(path)!r} names {name!r}, which is not in the training pool ({len(train_side)} "
                f"training images, e.g. {names[train_side[0]].decode().rsplit('/', 1)[-1]!r})"
            )
        if index == -1:
            raise UserError(
                f"subset list {str(path)!r} names {name!r}, a file name several class folders share; give its path "
                "under the training folder instead, e.g. <class>/" + name
            )
        out.append(index)
    return np.sort(np.array(out, dtype=np.int64))
