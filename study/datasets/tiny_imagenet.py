"""Tiny-ImageNet-200 in its official layout (``tiny-imagenet-200/`` from the zip):

    wnids.txt                     the 200 class ids (WordNet ids), one a line
    words.txt                     "<wnid><TAB><names>" for WordNet ids; class names come from here
    train/<wnid>/images/*.JPEG    500 training images per class, 64x64
    val/images/*.JPEG             10,000 labelled images, labelled by
    val/val_annotations.txt       "<file><TAB><wnid><TAB><x0><TAB><y0><TAB><x1><TAB><y1>"
    test/images/*.JPEG            unlabelled: ignored

The labelled val/ is the study's official test split; the harness draws its own validation split
from train/, so tuning and early stopping never see the images that are reported on.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from study.config import DataConfig
from study.datasets.base import Dataset
from study.datasets.cache import FilePlan, cache_key, load_or_decode_files
from study.datasets.decode import IMAGE_SUFFIXES
from study.datasets.imagefolder import flatten, list_class_files, require_images, source_fingerprint
from study.errors import UserError

NAME = "tiny-imagenet"
FOLDER = "tiny-imagenet-200"
_LAYOUT = f"a {FOLDER}/ folder with wnids.txt, words.txt, train/<wnid>/images/ and val/ (unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip)"


def load(cfg: DataConfig, cache_dir: Path) -> Dataset:
    """Train images labelled by their wnid folder, val/ as the official test split."""
    root = find_root(cfg.root)
    wnids = sorted(read_wnids(root / "wnids.txt"))  # sorted, as torchvision's ImageFolder orders train/
    readable = class_names(root / "words.txt", wnids)
    train_files = _train_files(root / "train", wnids)
    val_files, val_labels, missing = _val_files(root / "val", wnids)
    meta_files = [root / "wnids.txt", root / "words.txt", root / "val" / "val_annotations.txt"]
    key = cache_key(
        {
            "dataset": NAME,
            "root": str(root.resolve()),
            "files": source_fingerprint({"meta": meta_files, **train_files, "val": val_files}, root),
            "image_size": cfg.image_size,
        }
    )

    def plan() -> FilePlan:
        paths, labels, file_names = flatten(train_files, {w: i for i, w in enumerate(wnids)}, root / "train")
        test = np.r_[np.zeros(len(paths), bool), np.ones(len(val_files), bool)]
        return FilePlan(
            NAME,
            paths + val_files,
            np.r_[labels, val_labels],
            readable,
            file_names + [p.relative_to(root / "val").as_posix() for p in val_files],
            test=test,
            skipped=missing,
            check=_require_images(train_files, root),
        )

    return load_or_decode_files(cache_dir, NAME, key, plan, cfg.image_size)


def _require_images(train_files: dict[str, list[Path]], root: Path):
    check_train = require_images(train_files, root / "train")

    def check(labels: np.ndarray, test: np.ndarray | None) -> None:
        if not test.any():
            raise UserError(f"{root / 'val'} has no readable image; {_LAYOUT}")
        check_train(labels[~test], None)

    return check


def find_root(root: str) -> Path:
    """The tiny-imagenet-200/ folder: data.root itself, or the folder of that name inside it."""
    if not root:
        raise UserError(f"dataset {NAME!r} needs data.root (--data-root DIR): {_LAYOUT}")
    path = Path(root)
    for candidate in (path, path / FOLDER):
        if (candidate / "wnids.txt").is_file():
            return candidate
    if not path.is_dir():
        raise UserError(f"data.root {root!r} does not exist; expected {_LAYOUT}")
    raise UserError(f"data.root {root!r} has no wnids.txt; expected {_LAYOUT}")


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path} is missing; expected {_LAYOUT}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not a UTF-8 text file ({exc.reason} at byte {exc.start}); restore it from the zip"
        ) from None


def read_wnids(path: Path) -> list[str]:
    """The class ids listed in wnids.txt; refuses an empty list or a repeated id."""
    wnids = [line.strip() for line in _lines(path) if line.strip()]
    if not wnids:
        raise UserError(f"{path} lists no class; expected one WordNet id (e.g. n01443537) a line")
    repeated = [w for w, n in Counter(wnids).items() if n > 1]
    if repeated:
        raise UserError(f"{path} lists class {repeated[0]!r} twice; each WordNet id must appear once")
    return wnids


def class_names(path: Path, wnids: list[str]) -> list[str]:
    """Readable names for ``wnids`` from words.txt: the first synonym ("goldfish" of "goldfish,
    Carassius auratus"), with the wnid added where two classes would share a name."""
    words: dict[str, str] = {}
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        wnid, tab, text = line.partition("\t")
        if not tab or not wnid.strip() or not text.strip():
            raise UserError(
                f"{path} line {number} is malformed ({line[:60]!r}); expected '<wnid><TAB><names>', e.g. "
                "'n01443537<TAB>goldfish, Carassius auratus'"
            )
        words[wnid.strip()] = text.split(",")[0].strip()
    absent = [w for w in wnids if w not in words]
    if absent:
        raise UserError(
            f"{path} has no entry for class {absent[0]!r} of wnids.txt ({len(absent)} class(es) lack one); restore "
            "words.txt from the zip"
        )
    names = [words[w] for w in wnids]
    shared = Counter(names)
    return [f"{n} ({w})" if shared[n] > 1 else n for n, w in zip(names, wnids)]


def _train_files(train: Path, wnids: list[str]) -> dict[str, list[Path]]:
    """Image files of each class folder (the *_boxes.txt beside them are not images)."""
    folders = list_class_files(train, "tiny-imagenet train/")
    unknown = sorted(set(folders) - set(wnids))
    if unknown:
        raise UserError(
            f"{train / unknown[0]} is not a class of wnids.txt; expected only the {len(wnids)} wnid folders in train/"
        )
    absent = [w for w in wnids if w not in folders]
    if absent:
        raise UserError(
            f"{train} has no folder for class {absent[0]!r} of wnids.txt ({len(absent)} missing); expected {_LAYOUT}"
        )
    return {w: [p for p in folders[w] if p.suffix.lower() in IMAGE_SUFFIXES] for w in wnids}


def _val_files(val: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, labels, messages for listed files that are missing) from val_annotations.txt."""
    annotations = val / "val_annotations.txt"
    index = {w: i for i, w in enumerate(wnids)}
    files, labels, missing = [], [], []
    for number, line in enumerate(_lines(annotations), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip():
            raise UserError(
                f"{annotations} line {number} is malformed ({line[:60]!r}); expected '<file><TAB><wnid><TAB><box>'"
            )
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise UserError(
                f"{annotations} line {number} labels {name!r} with {wnid!r}, which is not a class of wnids.txt"
            )
        path = val / "images" / name
        if not path.is_file():
            missing.append(f"{path}: listed in val_annotations.txt line {number} but missing")
            continue
        files.append(path)
        labels.append(index[wnid])
    if not files:
        raise UserError(f"{annotations} names no image that exists in {val / 'images'}; expected {_LAYOUT}")
    return files, np.array(labels, dtype=np.int64), missing
