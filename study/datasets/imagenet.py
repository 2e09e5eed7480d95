"""ImageNet-1k (ILSVRC2012) as it is distributed:

    train/<wnid>/<wnid>_<n>.JPEG      1,281,167 training images, a folder per synset
    val/<wnid>/*.JPEG                 the 50,000 validation images, a folder per synset, or
    val/ILSVRC2012_val_<n>.JPEG       flat, labelled by one of
      LOC_val_solution.csv              Kaggle's: "ImageId,PredictionString" ("<wnid> <box>...")
      ILSVRC2012_validation_ground_truth.txt + meta.mat
                                        the devkit's: line n labels image n with an
                                        ILSVRC2012_ID, the synset order of the devkit's meta.mat
    LOC_synset_mapping.txt            optional: "<wnid> <names>" a line, for the class names

``data.root`` holds train/ and val/ (or is Kaggle's folder, with ILSVRC/Data/CLS-LOC/ inside);
the label files may lie in it, in val/, or in the devkit's folder (ILSVRC2012_devkit_t12/data/).
Classes are the train/ folders in sorted order (torchvision's order, and LOC_synset_mapping's).
The labelled validation set is the study's official test split, as in the label-efficiency
literature; the harness draws its own validation split from train/.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np

from study.config import DataConfig
from study.datasets.base import Dataset
from study.datasets.cache import FilePlan, cache_key, load_or_decode_files
from study.datasets.decode import IMAGE_SUFFIXES
from study.datasets.imagefolder import flatten, list_class_files, require_images, source_fingerprint
from study.errors import UserError

NAME = "imagenet"
SOLUTION = "LOC_val_solution.csv"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
SYNSETS = "LOC_synset_mapping.txt"
_LAYOUT = (
    "a folder with train/<wnid>/*.JPEG and val/ (a folder per wnid, or flat with LOC_val_solution.csv, or with "
    f"{GROUND_TRUTH} and the devkit's {META}); see docs/imagenet.md"
)
_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)")


def load(cfg: DataConfig, cache_dir: Path) -> Dataset:
    """Training images labelled by their synset folder; the labelled validation set as the test split."""
    root = find_root(cfg.root)
    images = _images_root(root)
    train_files = {w: [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES] for w, files in _folders(images).items()}
    wnids = list(train_files)
    val_files, val_labels, missing, label_file = _val_files(root, images / "val", wnids)
    names_file = _find(root, SYNSETS)
    class_names = read_synset_names(names_file, wnids) if names_file else wnids
    meta_files = [f for f in (label_file, names_file) if f is not None]
    key = cache_key(
        {
            "dataset": NAME,
            "root": str(root.resolve()),
            "files": source_fingerprint({**train_files, "val": val_files}, images),
            "meta": source_fingerprint({"meta": meta_files}, root) if meta_files else [],
            "image_size": cfg.image_size,
        }
    )

    def plan() -> FilePlan:
        paths, labels, file_names = flatten(train_files, {w: i for i, w in enumerate(wnids)}, images / "train")
        check_train = require_images(train_files, images / "train")

        def check(labels: np.ndarray, test: np.ndarray | None) -> None:
            if not test.any():
                raise UserError(f"{images / 'val'} has no readable image; expected {_LAYOUT}")
            check_train(labels[~test], None)

        return FilePlan(
            NAME,
            paths + val_files,
            np.r_[labels, val_labels],
            class_names,
            file_names + [p.relative_to(images / "val").as_posix() for p in val_files],
            test=np.r_[np.zeros(len(paths), bool), np.ones(len(val_files), bool)],
            skipped=missing,
            check=check,
        )

    return load_or_decode_files(cache_dir, NAME, key, plan, cfg.image_size)


def find_root(root: str) -> Path:
    """``data.root``, checked: it must hold train/ (directly or in Kaggle's ILSVRC/Data/CLS-LOC/)."""
    if not root:
        raise UserError(f"dataset {NAME!r} needs data.root (--data-root DIR): {_LAYOUT}")
    path = Path(root)
    if not path.is_dir():
        raise UserError(f"data.root {root!r} does not exist; expected {_LAYOUT}")
    if not (_images_root(path) / "train").is_dir():
        raise UserError(f"data.root {root!r} has no train/ folder; expected {_LAYOUT}")
    return path


def _images_root(root: Path) -> Path:
    kaggle = root / "ILSVRC" / "Data" / "CLS-LOC"
    return kaggle if (kaggle / "train").is_dir() else root


def _folders(images: Path) -> dict[str, list[Path]]:
    folders = list_class_files(images / "train", "imagenet train/")
    odd = [w for w in folders if not re.fullmatch(r"n\d{8}", w)]
    if odd:
        raise UserError(
            f"{images / 'train' / odd[0]} is not a synset folder; train/ holds a folder per WordNet id, e.g. n01440764"
        )
    return folders


def _find(root: Path, name: str) -> Path | None:
    """A label file where the distributions put it: data.root, val/, or the devkit's data/."""
    for folder in (
        root,
        _images_root(root) / "val",
        root / "ILSVRC2012_devkit_t12" / "data",
        root / "devkit" / "data",
    ):
        if (folder / name).is_file():
            return folder / name
    return None


def _val_files(root: Path, val: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray, list[str], Path | None]:
    """(files, labels, messages for labelled files that are missing, the label file used)."""
    if not val.is_dir():
        raise UserError(f"{val} does not exist; expected {_LAYOUT}")
    index = {w: i for i, w in enumerate(wnids)}
    folders = sorted(d.name for d in val.iterdir() if d.is_dir() and re.fullmatch(r"n\d{8}", d.name))
    if folders:  # a folder per synset
        unknown = [w for w in folders if w not in index]
        if unknown:
            raise UserError(f"{val / unknown[0]} is a synset that train/ lacks; val/ must use train/'s synsets")
        files = list_class_files(val, "imagenet val/")
        kept = {w: [p for p in files[w] if p.suffix.lower() in IMAGE_SUFFIXES] for w in folders}
        paths, labels, _ = flatten(kept, index, val)
        return paths, labels, [], None
    flat = sorted(p for p in val.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not flat:
        raise UserError(f"{val} has no images; expected {_LAYOUT}")
    solution = _find(root, SOLUTION)
    if solution is not None:
        return (*_by_solution(solution, val, index), solution)
    truth = _find(root, GROUND_TRUTH)
    if truth is not None:
        return (*_by_ground_truth(truth, _find(root, META), flat, index), truth)
    raise UserError(f"{val} is flat but no {SOLUTION} or {GROUND_TRUTH} labels it; expected {_LAYOUT}")


def _by_solution(path: Path, val: Path, index: dict[str, int]) -> tuple[list[Path], np.ndarray, list[str]]:
    """Kaggle's ``ImageId,PredictionString``: the first token of the boxes is the synset."""
    files, labels, missing = [], [], []
    with open(path, newline="") as f:
        for number, row in enumerate(csv.reader(f), 1):
            if number == 1 and row and row[0] == "ImageId":
                continue
            if len(row) < 2 or not row[1].split():
                raise UserError(
                    f"{path} line {number} is malformed ({','.join(row)[:60]!r}); expected ImageId,<wnid> ..."
                )
            image, wnid = row[0].strip(), row[1].split()[0]
            if wnid not in index:
                raise UserError(f"{path} line {number} labels {image!r} with {wnid!r}, which train/ has no folder for")
            file = next(
                (val / f"{image}{s}" for s in (".JPEG", ".jpg", ".jpeg", ".png") if (val / f"{image}{s}").is_file()),
                None,
            )
            if file is None:
                missing.append(f"{val / image}.JPEG: listed in {path.name} line {number} but missing")
                continue
            files.append(file)
            labels.append(index[wnid])
    order = np.argsort([p.name for p in files], kind="stable")  # the images in name order
    return [files[i] for i in order], np.array(labels, dtype=np.int64)[order], missing


def _by_ground_truth(
    path: Path, meta: Path | None, flat: list[Path], index: dict[str, int]
) -> tuple[list[Path], np.ndarray, list[str]]:
    """The devkit's labels: line n is the ILSVRC2012_ID of ILSVRC2012_val_<n>; meta.mat maps IDs to synsets."""
    if meta is None:
        raise UserError(f"{path} labels by the devkit's class IDs, which need the devkit's {META} beside it; {_LAYOUT}")
    by_id = devkit_synsets(meta)
    ids = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip().isdigit() or int(line) not in by_id:
            raise UserError(f"{path} line {number} is {line[:20]!r}; expected an ILSVRC2012_ID of {META} (1-1000)")
        ids.append(int(line))
    files, labels = [], []
    for p in flat:
        match = _VAL_NUMBER.search(p.name)
        if not match or not 1 <= int(match.group(1)) <= len(ids):
            raise UserError(f"{p} is not one of the {len(ids)} images {path.name} labels (ILSVRC2012_val_<n>.JPEG)")
        wnid = by_id[ids[int(match.group(1)) - 1]]
        if wnid not in index:
            raise UserError(f"{path} labels {p.name} with {wnid!r}, which train/ has no folder for")
        files.append(p)
        labels.append(index[wnid])
    return files, np.array(labels, dtype=np.int64), []


def devkit_synsets(meta: Path) -> dict[int, str]:
    """{ILSVRC2012_ID: wnid} of the leaf synsets in the devkit's meta.mat (as torchvision reads it)."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise UserError(f"{meta} is not the devkit's meta.mat ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}


def read_synset_names(path: Path, wnids: list[str]) -> list[str]:
    """Readable class names from LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca"): the first
    synonym, with the wnid added where two classes share it (ImageNet has two "crane"s)."""
    words = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        wnid, _, text = line.strip().partition(" ")
        if not line.strip():
            continue
        if not re.fullmatch(r"n\d{8}", wnid) or not text.strip():
            raise UserError(f"{path} line {number} is malformed ({line[:60]!r}); expected '<wnid> <names>'")
        words[wnid] = text.split(",")[0].strip()
    names = [words.get(w, w) for w in wnids]
    shared = Counter(names)
    return [f"{n} ({w})" if shared[n] > 1 and n != w else n for n, w in zip(names, wnids)]
