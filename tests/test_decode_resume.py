"""Decoding writes the cache chunk by chunk into a preallocated memory-mapped file, records each
finished chunk, and resumes after a kill: the result is the same cache, byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

import study.datasets.cache as cache
from study.config import DataConfig
from study.datasets import load_dataset
from tests.conftest import ROOT, write_imagefolder

CHUNK = 4


def _folder(tmp_path: Path) -> Path:
    root = write_imagefolder(tmp_path / "data", {"a": 13, "b": 12, "c": 11})
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # counted and skipped
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_killed_decode_resumes_and_gives_the_same_cache(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    cfg = DataConfig(dataset="imagefolder", root=str(root), image_size=16)
    monkeypatch.setattr(cache, "DECODE_CHUNK", CHUNK)
    monkeypatch.setattr(cache, "DECODE_JOBS", 2)  # the uninterrupted decode in parallel workers
    whole = load_dataset(cfg, tmp_path / "whole")
    assert len(whole) == 36 and len(whole.skipped) == 1 and "broken.jpg" in whole.skipped[0]

    # A decode in its own process that hangs once 3 chunks are done, and is killed there.
    script = textwrap.dedent(
        f"""
        import threading
        import study.datasets.cache as cache, study.datasets.decode as decode
        from study.config import DataConfig
        from study.datasets import load_dataset
        cache.DECODE_CHUNK, cache.DECODE_JOBS = {CHUNK}, 1
        real, calls = decode.decode_file, [0]
        def decode_file(path, size):
            calls[0] += 1
            if calls[0] > {3 * CHUNK}:
                threading.Event().wait()  # hangs, as a decode does when the machine is taken away
            return real(path, size)
        decode.decode_file = decode_file
        cfg = DataConfig(dataset="imagefolder", root={str(root)!r}, image_size=16)
        load_dataset(cfg, {str(tmp_path / "resumed")!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT)
    record = tmp_path / "resumed" / f".imagefolder-{whole.key}.partial" / "chunks.jsonl"
    deadline = time.monotonic() + 300
    while not (record.exists() and len(record.read_text().splitlines()) >= 3):
        assert proc.poll() is None, "the decode ended before it was killed"
        assert time.monotonic() < deadline, "the decode never recorded 3 chunks"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [json.loads(line)["chunk"] for line in record.read_text().splitlines()] == [0, 1, 2]
    assert not (tmp_path / "resumed" / f"imagefolder-{whole.key}").exists()  # no half cache is ever served

    decoded = []
    real = cache._decode_chunk
    monkeypatch.setattr(cache, "_decode_chunk", lambda i, *a: decoded.append(i) or real(i, *a))
    monkeypatch.setattr(cache, "DECODE_JOBS", 1)
    resumed = load_dataset(cfg, tmp_path / "resumed")
    assert decoded == list(range(3, 10))  # only the chunks not recorded as done
    assert _files(tmp_path / "resumed" / f"imagefolder-{whole.key}") == _files(
        tmp_path / "whole" / f"imagefolder-{whole.key}"
    )
    np.testing.assert_array_equal(resumed.images, whole.images)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == [f"imagefolder-{whole.key}"]
