"""The text / no-text dataset of the reference experiment, built from two public sources:

- MSRA-TD500 (images with text): ``<msra>/train/IMG_xxxx.JPG`` and ``<msra>/test/IMG_xxxx.JPG``,
  each beside its ``.gt`` box file (ignored here);
- Flickr8k (photos without text): ``<flickr>/Flicker8k_Dataset/*.jpg`` (the official zip) or
  ``<flickr>/Images/*.jpg`` (the Kaggle copy), or the .jpg files directly in ``<flickr>``.

``build`` samples ``per_class`` images of each class, resizes them to ``size`` x ``size`` and
writes an image folder with a manifest of the source files::

    OUT/train/{text,no_text}/*.png    OUT/test/{text,no_text}/*.png
    OUT/manifest.csv                  one row per image: split, class, file, source, source_split, source_file
    OUT/build.json                    the settings, counts and skipped source files

MSRA-TD500's own division is kept: its test images only ever go to the test split, its train
images only to the train split, and every Flickr8k image is used at most once, so no image
leaks between splits. Both classes get the same number of images in each split.

``load`` reads such a folder as dataset ``text-recognition`` (``OUT/test`` is the official test
split; no horizontal flips, mirrored text being no text a reader would see). The same folder
also works as ``--dataset imagefolder --data-root OUT/train --test-root OUT/test``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from study.config import DataConfig
from study.datasets.base import Dataset
from study.datasets.decode import IMAGE_SUFFIXES, decode_files
from study.datasets.imagefolder import load_folders
from study.errors import UserError

NAME = "text-recognition"
TEXT, NO_TEXT = "text", "no_text"
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ["split", "class", "file", "source", "source_split", "source_file"]
FLICKR_FOLDERS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")


def load(cfg: DataConfig, cache_dir: Path) -> Dataset:
    """A folder written by ``build``: OUT/train is the training side, OUT/test the test split."""
    hint = "build one with `python -m study datasets build-text-recognition --msra DIR --flickr DIR --out DIR`"
    if not cfg.root:
        raise UserError(f"dataset {NAME!r} needs data.root (--data-root DIR): the output folder of the builder; {hint}")
    root = Path(cfg.root)
    if not (root / MANIFEST).is_file():
        raise UserError(f"data.root {cfg.root!r} is not a text-recognition build (no {MANIFEST}); {hint}")
    return load_folders(NAME, root / "train", root / "test", cfg.image_size, cache_dir, hflip=False)


# -- building ---------------------------------------------------------------------------------


@dataclass
class _Pick:
    """The images chosen for one (split, class), and where they came from."""

    split: str
    label: str
    source: str  # msra-td500 | flickr8k
    source_root: Path
    source_split: str  # the source's own split ('train' / 'test'), or '' when it has none
    images: list[np.ndarray]
    paths: list[Path]


def msra_splits(msra: Path) -> tuple[list[Path], list[Path]]:
    """MSRA-TD500's train and test images (folder names matched case-insensitively)."""
    if not msra.is_dir():
        raise UserError(
            f"--msra {str(msra)!r} is not a folder; expected MSRA-TD500/ with train/ and test/ of IMG_xxxx.JPG and "
            ".gt files"
        )
    base = msra
    if not _subfolder(base, "train") and (msra / "MSRA-TD500").is_dir():
        base = msra / "MSRA-TD500"
    found = {}
    for split in ("train", "test"):
        folder = _subfolder(base, split)
        if folder is None:
            raise UserError(
                f"--msra {str(msra)!r} has no {split}/ folder; expected MSRA-TD500/ with train/ and test/ of "
                "IMG_xxxx.JPG and .gt files"
            )
        found[split] = _images_in(folder)
        if not found[split]:
            raise UserError(f"{folder} holds no image; expected IMG_xxxx.JPG files beside their .gt files")
    return found["train"], found["test"]


def flickr_images(flickr: Path) -> list[Path]:
    """Flickr8k's photos, from Flicker8k_Dataset/ (official zip), Images/ (Kaggle) or the folder itself."""
    if not flickr.is_dir():
        raise UserError(
            f"--flickr {str(flickr)!r} is not a folder; expected Flickr8k with Flicker8k_Dataset/ or Images/ of .jpg "
            "files"
        )
    for name in FLICKR_FOLDERS:
        if (flickr / name).is_dir():
            return _images_in(flickr / name)
    images = _images_in(flickr)
    if not images:
        raise UserError(
            f"--flickr {str(flickr)!r} holds no image; expected Flickr8k with Flicker8k_Dataset/ or Images/ of .jpg "
            "files"
        )
    return images


def _subfolder(folder: Path, name: str) -> Path | None:
    if not folder.is_dir():
        return None
    return next((d for d in sorted(folder.iterdir()) if d.is_dir() and d.name.lower() == name), None)


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def build(
    msra: Path,
    flickr: Path,
    out: Path,
    per_class: int = 200,
    size: int = 224,
    seed: int = 0,
    test_fraction: float = 0.2,
    force: bool = False,
) -> dict:
    """Sample, resize and write the dataset; returns the summary also written to build.json."""
    if per_class < 2:
        raise UserError(
            f"--per-class {per_class} is too small; use at least 2 (one training and one test image per class)"
        )
    if not 8 <= size <= 4096:
        raise UserError(f"--size {size} is invalid; use a side between 8 and 4096 px")
    if not 0 < test_fraction < 1:
        raise UserError(f"--test-fraction {test_fraction} must lie strictly between 0 and 1")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not out.is_dir() or not (out / MANIFEST).is_file():  # --force never deletes what it did not write
            raise UserError(
                f"--out {str(out)!r} exists and is not an earlier build (no {MANIFEST}); choose another folder"
            )
        if not force:
            raise UserError(
                f"--out {str(out)!r} already exists and is not empty; pass --force to replace it or choose another "
                "folder"
            )
    msra_train, msra_test = msra_splits(msra)
    photos = flickr_images(flickr)
    n_test = min(per_class - 1, max(1, round(per_class * test_fraction)))
    n_train = per_class - n_test

    rng = np.random.default_rng(seed)
    picks: list[_Pick] = []
    skipped: list[str] = []

    def pick(
        split: str, label: str, source: str, root: Path, source_split: str, candidates: list[Path], k: int
    ) -> list[Path]:
        """Choose ``k`` readable images among ``candidates``; returns the candidates not tried."""
        images, paths, bad, rest = _take(candidates, k, size)
        skipped.extend(bad)
        if len(paths) < k:
            where = f"{source} {source_split}/" if source_split else source
            raise UserError(
                f"{where} has {len(paths)} readable image(s) for the {split} split of class {label!r}, "
                f"but --per-class {per_class} needs {k}; lower --per-class"
            )
        picks.append(_Pick(split, label, source, root, source_split, images, paths))
        return rest

    pick("train", TEXT, "msra-td500", msra, "train", _shuffled(msra_train, rng), n_train)
    pick("test", TEXT, "msra-td500", msra, "test", _shuffled(msra_test, rng), n_test)
    # Flickr8k has no split of its own: the training images come from what the test split left.
    unused = pick("test", NO_TEXT, "flickr8k", flickr, "", _shuffled(photos, rng), n_test)
    pick("train", NO_TEXT, "flickr8k", flickr, "", unused, n_train)

    summary = {
        "msra": str(msra.resolve()),
        "flickr": str(flickr.resolve()),
        "per_class": per_class,
        "size": size,
        "seed": seed,
        "test_fraction": test_fraction,
        "counts": {p.split + "/" + p.label: len(p.paths) for p in picks},
        "skipped": skipped,
    }
    _write(out, picks, summary)
    return summary


def _write(out: Path, picks: list[_Pick], summary: dict) -> None:
    """Write the image folder, manifest and build.json into a temporary sibling, then move it
    into place, so an interrupted build never leaves a half-written dataset behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        rows = []
        for p in picks:
            folder = tmp / p.split / p.label
            folder.mkdir(parents=True)
            for img, path in zip(p.images, p.paths):
                file = folder / f"{p.source}_{path.stem}.png"
                Image.fromarray(img).save(file)  # PNG: no second lossy compression
                rows.append(
                    [
                        p.split,
                        p.label,
                        str(file.relative_to(tmp)),
                        p.source,
                        p.source_split,
                        str(path.relative_to(p.source_root)),
                    ]
                )
        with open(tmp / MANIFEST, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(sorted(rows))
        (tmp / "build.json").write_text(json.dumps(summary, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _shuffled(files: list[Path], rng: np.random.Generator) -> list[Path]:
    return [files[i] for i in rng.permutation(len(files))]


def _take(candidates: list[Path], k: int, size: int) -> tuple[list[np.ndarray], list[Path], list[str], list[Path]]:
    """The first ``k`` decodable candidates, resized: (images, their paths, skipped messages,
    candidates not tried). Unreadable files are skipped and replaced by the next candidate."""
    images, chosen, skipped = [], [], []
    position = 0
    while len(chosen) < k and position < len(candidates):
        batch = candidates[position : position + (k - len(chosen))]
        position += len(batch)
        decoded, ok, bad = decode_files(batch, size)
        images += list(decoded)
        chosen += [p for p, good in zip(batch, ok) if good]
        skipped += bad
    return images, chosen, skipped, candidates[position:]


def build_and_say(
    msra: Path, flickr: Path, out: Path, per_class: int, size: int, seed: int, test_fraction: float, force: bool
) -> int:
    """``study datasets build-text-recognition``: ``build`` and say what was written and how to use it."""
    import sys

    summary = build(msra, flickr, out, per_class, size, seed, test_fraction, force)
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"wrote {out}: {counts} images of {size}x{size} px; sources in {out / MANIFEST}")
    if summary["skipped"]:
        print(
            f"warning: {len(summary['skipped'])} unreadable source file(s) skipped, e.g. {summary['skipped'][0]}",
            file=sys.stderr,
        )
    print(f"use it with: python -m study run --dataset text-recognition --data-root {out}")
    return 0
