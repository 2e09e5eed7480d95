"""Decode once, memory-map afterwards.

A dataset is decoded into ``<cache_dir>/<name>-<key>/`` holding ``images.npy`` (uint8 N,H,W,3),
``labels.npy``, optionally ``test_mask.npy``, ``hashes.npy`` (each image's pixel digest, for the
leak check), ``names.npy`` (each image's source file, for subset lists) and ``meta.json``. The
key hashes everything the decoded pixels depend on (source file names, sizes and modification
times, decode settings), so a changed folder or setting is decoded again, never served stale.

Datasets of image files (``load_or_decode_files``) are decoded at any size: chunk by chunk,
by parallel workers, into a preallocated memory-mapped file in ``.<name>-<key>.partial/``; each
finished chunk is recorded in ``chunks.jsonl`` beside it, so a killed decode resumes where it
stopped. The folder is renamed into place when complete: a cache folder is always whole.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from study.datasets.base import Dataset
from study.errors import UserError
from study.splits import content_hashes

# Bump when decoding changes in a way that alters pixels, to invalidate every cache.
DECODE_VERSION = 1


def cache_key(parts: Any) -> str:
    """A short stable hash of JSON-serialisable ``parts``."""
    blob = json.dumps({"v": DECODE_VERSION, "parts": parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


DECODE_CHUNK = 512  # files per chunk: the unit of parallel work and of resuming
DECODE_JOBS = -1  # joblib workers decoding chunks (-1: one per core)


def load_or_decode(cache_dir: Path, name: str, key: str, decode: Callable[[], Dataset]) -> Dataset:
    """Return the cached dataset for ``key``, calling ``decode`` only when it is not cached
    (for datasets small enough to decode in memory: digits, CIFAR)."""
    folder = Path(cache_dir) / f"{name}-{key}"
    if not (folder / "meta.json").is_file():
        dataset = decode()
        _write(folder, dataset)
    return _read(folder, key)


@dataclass
class FilePlan:
    """What a dataset of image files decodes: one entry per file, in the cache's order.

    ``check(labels, test)`` receives the labels and test flags of the files that decoded and
    may refuse the result (a class with no readable image) with a UserError.
    """

    name: str
    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    names: list[str]  # what a subset list calls each file: its path under the split's folder
    test: np.ndarray | None = None  # bool per file: the official test split
    hflip: bool = True
    skipped: list[str] = field(default_factory=list)  # listed files found missing before decoding
    warnings: list[str] = field(default_factory=list)
    check: Callable[[np.ndarray, np.ndarray | None], None] | None = None


def load_or_decode_files(
    cache_dir: Path, name: str, key: str, plan: Callable[[], FilePlan], size: int, progress: bool | None = None
) -> Dataset:
    """Return the cached dataset for ``key``; decode ``plan()``'s files at ``size`` px when it is
    not cached, resuming a decode that was stopped. ``progress`` None shows a bar on a terminal."""
    folder = Path(cache_dir) / f"{name}-{key}"
    if (folder / "meta.json").is_file():
        return _read(folder, key)
    partial = Path(cache_dir) / f".{name}-{key}.partial"
    lock = Path(cache_dir) / f".{name}-{key}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with _locked(lock):  # one decoder at a time; the others then read its cache
        if not (folder / "meta.json").is_file():
            partial.mkdir(exist_ok=True)
            _decode_files(partial, plan(), size, progress)
            os.rename(partial, folder)
    lock.unlink(missing_ok=True)  # whoever waited on it finds the cache whole
    return _read(folder, key)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released by the OS if this process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _decode_files(partial: Path, plan: FilePlan, size: int, progress: bool | None) -> None:
    """Decode every chunk not yet recorded as done, then write the finished cache into ``partial``."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    n = len(plan.paths)
    if n == 0:  # nothing to decode: the loader's check says what is missing
        if plan.check is not None:
            plan.check(np.zeros(0, np.int64), None if plan.test is None else np.zeros(0, bool))
        raise UserError(f"dataset {plan.name!r} has no image files to decode")
    images_path, hashes_path = partial / "decoding.npy", partial / "hashes-decoding.npy"
    record = partial / "chunks.jsonl"
    if not (images_path.exists() and hashes_path.exists()):
        record.unlink(missing_ok=True)
        _preallocate(hashes_path, "S16", (n,))
        _preallocate(images_path, np.uint8, (n, size, size, 3))
    done = _done_chunks(record)
    chunks = [(i, s) for i, s in enumerate(range(0, n, DECODE_CHUNK)) if i not in done]
    paths = [str(p) for p in plan.paths]
    tasks = (
        delayed(_decode_chunk)(i, str(images_path), str(hashes_path), paths[s : s + DECODE_CHUNK], s, size)
        for i, s in chunks
    )
    initial = n - sum(len(paths[s : s + DECODE_CHUNK]) for _, s in chunks)
    shown = None if progress is None else not progress  # tqdm's None: a bar on a terminal only
    bar = tqdm(total=n, initial=initial, desc=f"decoding {plan.name}", unit="img", disable=shown)
    with bar, open(record, "a") as out:
        results = (
            Parallel(n_jobs=DECODE_JOBS, return_as="generator_unordered")(tasks)
            if len(chunks) > 1 and DECODE_JOBS != 1
            else (task[0](*task[1], **task[2]) for task in tasks)
        )
        for i, count, skipped in results:
            out.write(json.dumps({"chunk": i, "skipped": skipped}) + "\n")
            out.flush()  # the chunk's rows are in the file: it is done for good
            done[i] = skipped
            bar.update(count)
    _finish(partial, plan, [s for i in sorted(done) for s in done[i]], images_path, hashes_path)


def _preallocate(path: Path, dtype, shape: tuple[int, ...]) -> None:
    """An .npy file of ``shape`` (sparse: the disk fills as chunks are written), made under a
    temporary name so that a kill never leaves a short file behind."""
    tmp = path.with_name(path.name + ".tmp")
    np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).flush()
    os.rename(tmp, path)


def _decode_chunk(i: int, images_path: str, hashes_path: str, paths: list[str], start: int, size: int):
    from study.datasets.decode import decode_chunk_into

    return i, len(paths), decode_chunk_into(images_path, hashes_path, paths, start, size)


def _done_chunks(record: Path) -> dict[int, list[str]]:
    """Chunks recorded as decoded: {chunk: its "<row>\t<message>" skips}; a torn last line is ignored."""
    done: dict[int, list[str]] = {}
    if record.exists():
        for line in record.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the write a kill interrupted: that chunk is decoded again
            done[int(entry["chunk"])] = list(entry["skipped"])
    return done


def _finish(partial: Path, plan: FilePlan, skips: list[str], images_path: Path, hashes_path: Path) -> None:
    """The cache's files from the decoded rows: undecodable files' rows left out, their messages
    kept; ``plan.check`` may refuse what is left."""
    ok = np.ones(len(plan.paths), dtype=bool)
    messages = []
    for skip in skips:
        row, message = skip.split("\t", 1)
        ok[int(row)] = False
        messages.append(message)
    labels = np.asarray(plan.labels, dtype=np.int64)[ok]
    test = None if plan.test is None else np.asarray(plan.test, dtype=bool)[ok]
    if plan.check is not None:
        plan.check(labels, test)
    hashes = np.load(hashes_path)[ok]
    if ok.all():
        os.rename(images_path, partial / "images.npy")
    else:  # rows of undecodable files are left out: a compacted copy, written a slice at a time
        raw = np.load(images_path, mmap_mode="r")
        kept = np.flatnonzero(ok)
        shape = (len(kept), *raw.shape[1:])
        out = np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
        step = max(1, 2**26 // max(1, int(np.prod(raw.shape[1:]))))
        for s in range(0, len(kept), step):
            out[s : s + step] = raw[kept[s : s + step]]
        out.flush()
        del out, raw
        images_path.unlink()
    hashes_path.unlink()
    np.save(partial / "hashes.npy", hashes)
    np.save(partial / "labels.npy", labels)
    names = np.asarray(plan.names, dtype=object)[ok]
    np.save(partial / "names.npy", np.array([n.encode() for n in names], dtype=bytes))
    if test is not None:
        np.save(partial / "test_mask.npy", test)
    (partial / "chunks.jsonl").unlink()
    _write_meta(partial, plan.name, plan.class_names, plan.hflip, plan.skipped + messages, plan.warnings)


def _write(folder: Path, dataset: Dataset) -> None:
    # Written into a temporary sibling and renamed, so a crash or a parallel writer never
    # leaves a half-written cache that a later run would trust.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        np.save(tmp / "images.npy", np.ascontiguousarray(dataset.images, dtype=np.uint8))
        np.save(tmp / "labels.npy", np.asarray(dataset.labels, dtype=np.int64))
        if dataset.test_mask is not None:
            np.save(tmp / "test_mask.npy", np.asarray(dataset.test_mask, dtype=bool))
        np.save(tmp / "hashes.npy", content_hashes(dataset.images))
        _write_meta(tmp, dataset.name, dataset.class_names, dataset.hflip, dataset.skipped, dataset.warnings)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process wrote the same key first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_meta(folder: Path, name: str, class_names, hflip: bool, skipped: list[str], warnings: list[str]) -> None:
    meta = {"name": name, "class_names": class_names, "hflip": hflip, "skipped": skipped, "warnings": warnings}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: it marks the cache whole


def cached_hashes(dataset: Dataset) -> np.ndarray:
    """The dataset's pixel digests: from its cache folder (read, not recomputed: a worker never
    reads every image), computed and stored there for a cache written before they were kept."""
    folder = Path(getattr(dataset.images, "filename", "") or ".").parent
    path = folder / "hashes.npy"
    if path.is_file():
        return np.load(path)
    hashes = content_hashes(dataset.images)
    if (folder / "meta.json").is_file():
        try:
            tmp = folder / f".hashes-{os.getpid()}.npy"
            np.save(tmp, hashes)
            os.rename(tmp, path)
        except OSError:  # a read-only cache: computed each time, as before
            pass
    return hashes


def _read(folder: Path, key: str) -> Dataset:
    meta = json.loads((folder / "meta.json").read_text())
    mask_path = folder / "test_mask.npy"
    names_path = folder / "names.npy"
    return Dataset(
        name=meta["name"],
        images=np.load(folder / "images.npy", mmap_mode="r"),
        labels=np.load(folder / "labels.npy"),
        class_names=list(meta["class_names"]),
        test_mask=np.load(mask_path) if mask_path.exists() else None,
        hflip=bool(meta["hflip"]),
        skipped=list(meta["skipped"]),
        key=key,
        warnings=list(meta.get("warnings", [])),
        names=np.load(names_path, mmap_mode="r") if names_path.exists() else None,
    )
