"""Shared fixtures: small real image folders written by the tests, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Small real timm models: a whole study trains in seconds on a CPU.
FAST_MODEL = "test_resnet"


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


@pytest.fixture
def cli(capsys):
    """Run ``python -m study ARGS`` in-process; returns (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def run_subprocess(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m study ARGS`` as a real process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "study", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
