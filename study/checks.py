"""Checks of where a command writes and what it trains on, made before anything is written:
a refused command leaves no study, no database and no half-written folder behind."""

from __future__ import annotations

import os
from pathlib import Path

from study.errors import UserError


def check_out(out: str | Path) -> Path:
    """Refuse an ``--out`` that is a file, or a folder (or the nearest existing folder above a
    new one) this process cannot write into; returns the path. Nothing is created here."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {str(path)!r} is a file; give a folder (it is made if missing), e.g. --out study-out")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"--out {str(path)!r} lies under the file {str(existing)!r}; give a folder, e.g. --out study-out"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"--out {str(path)!r} is not writable ({str(existing)!r} refuses this user); give a folder you can write to"
        )
    return path


def check_device(name: str) -> None:
    """Refuse a device this machine does not have (``cuda`` without CUDA) before the study is
    recorded; imports torch."""
    from study.train import resolve_device

    resolve_device(name)
