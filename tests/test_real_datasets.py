"""Tiny-ImageNet-200, CIFAR-10/100 and the text / no-text dataset, each from a small copy in its
real on-disk layout written by the tests (real JPEG / PNG encoders, torchvision's pickle
format), loaded, broken in the ways real copies break, and run as a study end to end."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
from PIL import Image

from study.config import DataConfig
from study.datasets import load_dataset
from study.datasets.text_recognition import build
from study.errors import UserError
from tests.conftest import FAST_MODEL, TINY_WNIDS, write_cifar, write_flickr, write_msra, write_tiny_imagenet

SMALL = [
    "--models",
    FAST_MODEL,
    "--image-size",
    "16",
    "--budget",
    "fixed",
    "--no-budget-control",
    "--epochs",
    "1",
    "--min-steps",
    "2",
    "--seeds",
    "1",
    "--jobs",
    "1",
    "--threads",
    "1",
    "--quiet",
    "--no-report",
]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def cifar10(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar10"), "cifar10", n_train=6, n_test=2)


@pytest.fixture(scope="session")
def cifar100(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar100"), "cifar100", n_train=3, n_test=1)


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sources")
    return write_msra(base / "MSRA-TD500"), write_flickr(base / "Flickr8k")


@pytest.fixture(scope="session")
def text_build(tmp_path_factory, sources) -> Path:
    out = tmp_path_factory.mktemp("text") / "text-recognition"
    # 9 per class: 7 for training, which takes every readable MSRA-TD500 training image, and all
    # readable Flickr8k photos, so both unreadable source files are met and replaced.
    build(*sources, out, per_class=9, size=24, seed=0, test_fraction=0.25)
    return out


def _refused(result, fragment):
    code, out, err = result
    assert code == 2, (code, out, err)
    (line,) = err.strip().splitlines()
    assert line.startswith("study: error: ") and fragment in line and "Traceback" not in err


def _study_row(out: Path) -> tuple[dict, dict]:
    db = sqlite3.connect(out / "study.db")
    dataset, splits = db.execute("select dataset, splits from dataset_studies").fetchone()
    return json.loads(dataset), json.loads(splits)


# -- Tiny-ImageNet ----------------------------------------------------------------------------


def test_tiny_imagenet_reads_the_official_layout(tiny, tmp_path):
    ds = load_dataset(DataConfig(dataset="tiny-imagenet", root=str(tiny), image_size=16), tmp_path)
    assert ds.class_names == [
        "goldfish",
        "European fire salamander",
        "bullfrog",
    ]  # words.txt, first synonym, wnids sorted
    # 3 classes x (8 JPEG + 1 RGBA PNG) train, one truncated; 9 val images; test/ and *_boxes.txt ignored
    assert ds.images.shape == (3 * 9 - 1 + 9, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.test_mask.sum() == 9 and np.bincount(ds.labels[ds.test_mask]).tolist() == [3, 3, 3]
    assert np.bincount(ds.labels[~ds.test_mask]).tolist() == [8, 9, 9]
    (skipped,) = ds.skipped
    assert f"{TINY_WNIDS[0]}_0.JPEG" in skipped and "truncated" in skipped
    val = ds.images[ds.test_mask]
    assert np.array_equal(val[1][..., 0], val[1][..., 2])  # the grayscale JPEG, made 3-channel


def test_tiny_imagenet_root_may_be_the_folder_above(tiny, tmp_path):
    ds = load_dataset(DataConfig(dataset="tiny-imagenet", root=str(tiny.parent), image_size=16), tmp_path)
    assert len(ds.class_names) == 3


def _break_words(root: Path):
    (root / "words.txt").write_text("n01443537\tgoldfish\nthis line has no tab\n")


@pytest.mark.parametrize(
    "breakage, fragment",
    [
        (_break_words, "words.txt line 2 is malformed ('this line has no tab'); expected '<wnid><TAB><names>'"),
        (
            lambda r: (r / "words.txt").write_text("n01443537\tgoldfish\n"),
            "has no entry for class 'n01629819' of wnids.txt",
        ),
        (lambda r: (r / "words.txt").write_bytes(b"\xff\xfe\x00garbage"), "words.txt is not a UTF-8 text file"),
        (
            lambda r: (
                shutil.rmtree(r / "train" / TINY_WNIDS[1] / "images")
                or (r / "train" / TINY_WNIDS[1] / "images").mkdir()
            ),
            f"class folder '{{root}}/train/{TINY_WNIDS[1]}' has no readable image",
        ),
        (
            lambda r: shutil.rmtree(r / "train" / TINY_WNIDS[2]),
            f"has no folder for class '{TINY_WNIDS[2]}' of wnids.txt",
        ),
        (
            lambda r: (r / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n"),
            "line 1 labels 'val_0.JPEG' with 'n00000000', which is not a class",
        ),
        (
            lambda r: (r / "val" / "val_annotations.txt").write_text("val_0.JPEG\n"),
            "val_annotations.txt line 1 is malformed",
        ),
        (lambda r: (r / "wnids.txt").unlink(), "has no wnids.txt; expected a tiny-imagenet-200/ folder"),
    ],
)
def test_broken_tiny_imagenet_is_refused_in_one_line(cli, tiny, tmp_path, breakage, fragment):
    root = shutil.copytree(tiny, tmp_path / "tiny-imagenet-200")
    breakage(root)
    _refused(
        cli("run", "--out", tmp_path / "o", *SMALL, "--dataset", "tiny-imagenet", "--data-root", root),
        fragment.format(root=root),
    )


def test_val_annotation_naming_a_missing_file_is_skipped_and_counted(tiny, tmp_path):
    root = shutil.copytree(tiny, tmp_path / "tiny-imagenet-200")
    (root / "val" / "images" / "val_4.JPEG").unlink()
    ds = load_dataset(DataConfig(dataset="tiny-imagenet", root=str(root), image_size=16), tmp_path / "c")
    assert ds.test_mask.sum() == 8
    assert any("val_4.JPEG: listed in val_annotations.txt line 5 but missing" in s for s in ds.skipped)


def test_tiny_imagenet_study_end_to_end(cli, tiny, tmp_path):
    code, out, err = cli(
        "run",
        "--out",
        tmp_path / "o",
        *SMALL,
        "--dataset",
        "tiny-imagenet",
        "--data-root",
        tiny,
        "--fractions",
        "0.5,1",
    )
    assert code == 0, err
    assert "1 file(s) could not be decoded and were skipped" in err
    assert len(list(csv.DictReader(open(tmp_path / "o" / "results.csv")))) == 2
    dataset, splits = _study_row(tmp_path / "o")
    assert dataset["name"] == "tiny-imagenet" and dataset["official_test_split"] and splits["n_test"] == 9


# -- CIFAR ------------------------------------------------------------------------------------


def test_cifar10_is_read_by_torchvision_from_its_own_format(cifar10, tmp_path):
    ds = load_dataset(DataConfig(dataset="cifar10", root=str(cifar10), image_size=32), tmp_path)
    assert ds.images.shape == (10 * 8, 32, 32, 3) and ds.class_names[:2] == ["class_0", "class_1"]
    assert ds.test_mask.sum() == 20 and np.bincount(ds.labels[~ds.test_mask]).tolist() == [6] * 10
    (warning,) = ds.warnings  # the copy written here cannot match the published checksums
    assert "data_batch_1" in warning and "differ from the published checksums" in warning
    # the batches folder itself is accepted too, and a new size is decoded from the same copy
    again = load_dataset(
        DataConfig(dataset="cifar10", root=str(cifar10 / "cifar-10-batches-py"), image_size=16), tmp_path
    )
    assert again.images.shape[1:] == (16, 16, 3)


def test_cifar100_uses_the_fine_labels(cifar100, tmp_path):
    ds = load_dataset(DataConfig(dataset="cifar100", root=str(cifar100)), tmp_path)
    assert len(ds.class_names) == 100 and ds.labels.max() == 99 and ds.test_mask.sum() == 100


def test_missing_or_corrupt_cifar_copy_is_refused(cli, cifar10, tmp_path):
    _refused(
        cli("run", "--out", tmp_path / "o", *SMALL, "--dataset", "cifar10", "--data-root", tmp_path),
        "holds no CIFAR-10 copy (cifar-10-batches-py/data_batch_1 is missing)",
    )
    root = shutil.copytree(cifar10, tmp_path / "copy")
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    _refused(
        cli("run", "--out", tmp_path / "o", *SMALL, "--dataset", "cifar10", "--data-root", root),
        "could not be read (UnpicklingError",
    )


def test_failed_download_says_how_to_provide_the_copy(cli, tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    def offline(*args, **kwargs):  # simulates a machine without internet; nothing is downloaded
        raise URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    _refused(
        cli("run", "--out", tmp_path / "o", *SMALL, "--dataset", "cifar100"),
        "could not download CIFAR-100 from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    )


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_study_end_to_end(cli, request, tmp_path, kind):
    code, out, err = cli(
        "run",
        "--out",
        tmp_path / "o",
        *SMALL,
        "--dataset",
        kind,
        "--data-root",
        request.getfixturevalue(kind),
        "--fractions",
        "1",
    )
    assert code == 0, err
    assert "differ from the published checksums" in err
    dataset, splits = _study_row(tmp_path / "o")
    assert splits["n_test"] == (20 if kind == "cifar10" else 100)


# -- text / no text ---------------------------------------------------------------------------


def _manifest(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "manifest.csv")))


def test_text_build_is_balanced_resized_and_leak_free(text_build, sources):
    rows = _manifest(text_build)
    counts = {(r["split"], r["class"]): 0 for r in rows}
    for r in rows:
        counts[(r["split"], r["class"])] += 1
    assert counts == {("train", "text"): 7, ("train", "no_text"): 7, ("test", "text"): 2, ("test", "no_text"): 2}
    for r in rows:
        with Image.open(text_build / r["file"]) as img:
            assert img.size == (24, 24) and img.mode == "RGB"
        assert (text_build / r["file"]).parent == text_build / r["split"] / r["class"]
        if r["source"] == "msra-td500":  # MSRA-TD500's own division is kept
            assert r["source_split"] == r["split"] and r["source_file"].startswith(f"{r['split']}/")
            assert (sources[0] / r["source_file"]).is_file()
        else:
            assert r["class"] == "no_text" and (sources[1] / r["source_file"]).is_file()
    by_split = {s: {r["source_file"] for r in rows if r["split"] == s} for s in ("train", "test")}
    assert not by_split["train"] & by_split["test"] and len(by_split["train"]) == 14 and len(by_split["test"]) == 4
    pixels = {
        s: {
            hashlib.sha1((np.asarray(Image.open(text_build / r["file"]))).tobytes()).hexdigest()
            for r in rows
            if r["split"] == s
        }
        for s in ("train", "test")
    }
    assert not pixels["train"] & pixels["test"]
    assert sorted(p.name for p in text_build.rglob("*.png")) == sorted(
        Path(r["file"]).name for r in rows
    )  # manifest = files
    summary = json.loads((text_build / "build.json").read_text())
    assert len(summary["skipped"]) == 2  # the truncated MSRA photo and the corrupt Flickr8k file, replaced
    assert not any(r["source_file"].endswith(("IMG_0100.JPG", "corrupt.jpg")) for r in rows)
    assert any(r["source_file"].endswith("rgba.png") for r in rows)  # an RGBA PNG among the photos, flattened to RGB


def test_text_build_command_seeds_and_refusals(cli, sources, tmp_path):
    msra, flickr = sources
    code, out, err = cli(
        "datasets",
        "build-text-recognition",
        "--msra",
        msra,
        "--flickr",
        flickr,
        "--out",
        tmp_path / "a",
        "--per-class",
        "6",
        "--size",
        "20",
    )
    assert code == 0, err
    assert (
        "train/text 5" in out
        and "--dataset text-recognition --data-root" in out
        and "unreadable source file(s) skipped, e.g." in err
    )
    cli(
        "datasets",
        "build-text-recognition",
        "--msra",
        msra,
        "--flickr",
        flickr,
        "--out",
        tmp_path / "b",
        "--per-class",
        "6",
        "--size",
        "20",
    )
    cli(
        "datasets",
        "build-text-recognition",
        "--msra",
        msra,
        "--flickr",
        flickr,
        "--out",
        tmp_path / "c",
        "--per-class",
        "6",
        "--size",
        "20",
        "--seed",
        "3",
    )
    assert _manifest(tmp_path / "a") == _manifest(tmp_path / "b") != _manifest(tmp_path / "c")
    args = ["datasets", "build-text-recognition", "--msra", msra, "--flickr", flickr]
    _refused(cli(*args, "--out", tmp_path / "a"), "already exists and is not empty; pass --force")
    _refused(
        cli(*args, "--out", tmp_path / "d", "--per-class", "40"),
        "msra-td500 train/ has 7 readable image(s) for the train split of class 'text', but --per-class 40 needs 32; "
        "lower --per-class",
    )
    _refused(
        cli("datasets", "build-text-recognition", "--msra", flickr, "--flickr", flickr, "--out", tmp_path / "e"),
        "has no train/ folder",
    )
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    _refused(cli(*args, "--out", tmp_path / "notes", "--force"), "exists and is not an earlier build (no manifest.csv)")
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"
    code, _, _ = cli(*args, "--out", tmp_path / "a", "--per-class", "4", "--size", "20", "--force")
    assert code == 0 and len(_manifest(tmp_path / "a")) == 8


def test_text_recognition_dataset_reads_the_build(text_build, tmp_path):
    ds = load_dataset(DataConfig(dataset="text-recognition", root=str(text_build), image_size=24), tmp_path)
    assert ds.class_names == ["no_text", "text"] and not ds.hflip
    assert ds.test_mask.sum() == 4 and len(ds) == 18
    with pytest.raises(UserError, match="is not a text-recognition build"):
        load_dataset(DataConfig(dataset="text-recognition", root=str(text_build / "train"), image_size=24), tmp_path)


@pytest.mark.parametrize("how", ["text-recognition", "imagefolder"])
def test_text_study_end_to_end(cli, text_build, tmp_path, how):
    where = (
        ["--data-root", text_build]
        if how == "text-recognition"
        else ["--data-root", text_build / "train", "--test-root", text_build / "test"]
    )
    code, out, err = cli("run", "--out", tmp_path / "o", *SMALL, "--dataset", how, *where, "--fractions", "1")
    assert code == 0, err
    dataset, splits = _study_row(tmp_path / "o")
    assert dataset["class_names"] == ["no_text", "text"] and dataset["official_test_split"]
    assert splits["n_test"] == 4 and dataset["class_counts"] == [9, 9]
