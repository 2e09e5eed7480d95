"""Shared fixtures: small real image folders written by the tests, and a CLI runner."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study.cli import main
from tests.postgres import NoPostgres, fresh_database, throwaway_postgres

ROOT = Path(__file__).resolve().parents[1]
# Small real timm models: a whole study trains in seconds on a CPU.
FAST_MODEL = "test_resnet"
# A study that trains in a second or two a run: the fast model at 16 px, 2 epochs, one torch thread.
TINY_STUDY = [
    "--models",
    FAST_MODEL,
    "--image-size",
    "16",
    "--budget",
    "fixed",
    "--no-budget-control",
    "--epochs",
    "2",
    "--min-steps",
    "4",
    "--threads",
    "1",
]

# Runs of eight fixed epochs of 40 steps, each the same length whatever it learns: long enough for a
# test to see a run start and act on it mid-way (a signal, a kill, a second worker).
LONG_RUNS = ["--budget", "fixed", "--no-budget-control", "--patience", "0", "--epochs", "8", "--min-steps", "320"]


@pytest.fixture(autouse=True)
def short_latency_budget(monkeypatch):
    """Studies run in-process by the tests measure each model's CPU latency for 0.05 s per
    thread setting instead of a second: tests check that costs are measured and stored, not the
    figures, and on a shared 2-core machine the all-threads measurement can take seconds."""
    import study.costs

    monkeypatch.setattr(study.costs, "LATENCY_SECONDS", 0.05)


def class_image(rng: np.random.Generator, label: int, size: tuple[int, int] = (24, 20)) -> np.ndarray:
    """A noisy image whose colour and stripe direction depend on its class, so it is learnable."""
    h, w = size
    img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    img[..., label % 3] += 150
    if label % 2:
        img[::4] = 255
    else:
        img[:, ::4] = 255
    return img


def write_imagefolder(root: Path, counts: dict[str, int], seed: int = 0, mixed_modes: bool = True) -> Path:
    """Write ``root/<class>/<i>.{png,jpg}`` with real encoders; with ``mixed_modes`` some images
    are grayscale, RGBA and palette, as real folders are."""
    rng = np.random.default_rng(seed)
    for label, (name, n) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = Image.fromarray(class_image(rng, label))
            mode = i % 4 if mixed_modes else 0
            if mode == 1:
                img.convert("L").save(folder / f"{i}.png")
            elif mode == 2:
                img.convert("RGBA").save(folder / f"{i}.png")
            elif mode == 3:
                img.save(folder / f"{i}.jpg", quality=90)
            else:
                img.save(folder / f"{i}.png")
    return root


def save_image(path: Path, rgb: np.ndarray, mode: str = "RGB") -> Path:
    """Save ``rgb`` with a real encoder in ``mode``: 'RGB' or 'L' (JPEG or PNG by suffix), 'RGBA'
    (PNG), 'CMYK' (JPEG), 'P' (palette PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rgb)
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode != "RGB":
        img = img.convert(mode)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    img.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def truncate(path: Path) -> Path:
    """Cut a real image file in half, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


TINY_WNIDS = ["n01443537", "n01629819", "n01641577"]
TINY_WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n01629819": "European fire salamander, Salamandra salamandra",
    "n01641577": "bullfrog, Rana catesbeiana",
}


def write_tiny_imagenet(parent: Path, n_train: int = 8, n_val: int = 3, seed: int = 0) -> Path:
    """A small copy of the official ``tiny-imagenet-200/`` layout: JPEGs (RGB, grayscale, CMYK),
    an RGBA PNG, a truncated JPEG, the *_boxes.txt files, a words.txt with unrelated entries,
    val/ with val_annotations.txt, and an unlabelled test/."""
    rng = np.random.default_rng(seed)
    root = parent / "tiny-imagenet-200"
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(reversed(TINY_WNIDS)) + "\n")
    words = {"n00001740": "entity", **TINY_WORDS, "n99999999": "something else"}
    (root / "words.txt").write_text("".join(f"{w}\t{t}\n" for w, t in words.items()))
    modes = ["RGB", "L", "RGB", "CMYK"]
    for label, wnid in enumerate(TINY_WNIDS):
        folder = root / "train" / wnid / "images"
        for i in range(n_train):
            save_image(folder / f"{wnid}_{i}.JPEG", class_image(rng, label, (64, 64)), modes[i % 4])
        save_image(folder / f"{wnid}_rgba.png", class_image(rng, label, (64, 64)), "RGBA")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(
            "".join(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(n_train))
        )
    truncate(root / "train" / TINY_WNIDS[0] / "images" / f"{TINY_WNIDS[0]}_0.JPEG")
    lines = []
    for i in range(n_val * len(TINY_WNIDS)):
        label = i % len(TINY_WNIDS)
        save_image(
            root / "val" / "images" / f"val_{i}.JPEG", class_image(rng, label, (64, 64)), "L" if i == 1 else "RGB"
        )
        lines.append(f"val_{i}.JPEG\t{TINY_WNIDS[label]}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    for i in range(2):
        save_image(root / "test" / "images" / f"test_{i}.JPEG", class_image(rng, 0, (64, 64)))
    return root


def write_cifar(root: Path, kind: str = "cifar10", n_train: int = 6, n_test: int = 2, seed: int = 0) -> Path:
    """A small copy in torchvision's on-disk format (pickled dict batches of uint8 rows, CHW,
    and the meta file), which torchvision's own CIFAR10/CIFAR100 classes read."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    n_classes = 10 if kind == "cifar10" else 100
    label_key = "labels" if kind == "cifar10" else "fine_labels"
    rng = np.random.default_rng(seed)
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n_per_class: int) -> dict:
        labels = [c for c in range(n_classes) for _ in range(n_per_class)]
        images = np.stack([class_image(rng, c, (32, 32)) for c in labels])
        return {"data": images.transpose(0, 3, 1, 2).reshape(len(labels), -1), label_key: labels}

    files = [f for f, _ in cls.train_list]
    for i, name in enumerate(files):  # the training images spread over the real number of batches
        share = n_train // len(files) + (1 if i < n_train % len(files) else 0)
        with open(folder / name, "wb") as f:
            pickle.dump(batch(share), f)
    with open(folder / cls.test_list[0][0], "wb") as f:
        pickle.dump(batch(n_test), f)
    names = [f"class_{c}" for c in range(n_classes)]
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: names}, f)
    return root


def write_msra(root: Path, n_train: int = 8, n_test: int = 5, seed: int = 1) -> Path:
    """MSRA-TD500's layout: train/ and test/ of IMG_xxxx.JPG beside IMG_xxxx.gt, photos of
    other sizes than the output, one grayscale and one truncated."""
    rng = np.random.default_rng(seed)
    for split, n, start in (("train", n_train, 100), ("test", n_test, 500)):
        for i in range(n):
            stem = f"IMG_{start + i:04d}"
            save_image(root / split / f"{stem}.JPG", class_image(rng, 1, (48, 64)), "L" if i == 1 else "RGB")
            (root / split / f"{stem}.gt").write_text("0 1 10 10 30 12 0.0\n")
    truncate(root / "train" / "IMG_0100.JPG")
    return root


def write_flickr(root: Path, n: int = 8, seed: int = 2) -> Path:
    """Flickr8k's layout: Flicker8k_Dataset/ of .jpg photos (one grayscale, one corrupt, and an
    RGBA PNG among them), and the caption text folder beside it."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        save_image(
            root / "Flicker8k_Dataset" / f"{1000 + i}_{i:04x}.jpg",
            class_image(rng, 0, (40, 60)),
            "L" if i == 2 else "RGB",
        )
    save_image(root / "Flicker8k_Dataset" / "1998_rgba.png", class_image(rng, 0, (40, 60)), "RGBA")
    (root / "Flicker8k_Dataset" / "1999_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "Flickr8k_text").mkdir()
    (root / "Flickr8k_text" / "Flickr8k.token.txt").write_text("1000_0000.jpg#0\tA dog runs .\n")
    return root


def silence(store, table, row_id: int, seconds: float) -> None:
    """Make a claim look silent for ``seconds`` by the database's clock (its last heartbeat set
    back), as a worker that stopped beating would leave it, without waiting that long."""
    from datetime import timedelta

    from sqlalchemy import update

    with store.session() as s:
        s.execute(update(table).where(table.id == row_id).values(heartbeat_at=store.now() - timedelta(seconds=seconds)))


@pytest.fixture
def cli(capsys):
    """Run ``python -m study ARGS`` in-process; returns (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def run_subprocess(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m study ARGS`` as a real process (``env`` adds environment variables)."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "study", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- PostgreSQL for the tests marked `distributed` ---------------------------------------------


def _no_postgres(reason: str):
    """Skip, or fail where CI installed PostgreSQL and said so (STUDY_REQUIRE_POSTGRES=1)."""
    if os.environ.get("STUDY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"STUDY_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(f"{reason}; install Debian's postgresql (or set STUDY_TEST_POSTGRES_URL) to run the distributed tests")


@pytest.fixture(scope="session")
def postgres_server():
    """The SQLAlchemy URL of a PostgreSQL server on loopback: $STUDY_TEST_POSTGRES_URL, or a
    throwaway cluster (tests/postgres.py)."""
    given = os.environ.get("STUDY_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    server = throwaway_postgres()
    try:
        url = server.__enter__()
    except NoPostgres as exc:
        _no_postgres(str(exc))
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the test server, dropped afterwards."""
    pytest.importorskip("psycopg", reason="the distributed tests need psycopg: pip install 'study[distributed]'")
    with fresh_database(postgres_server) as url:
        yield url
