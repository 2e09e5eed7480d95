"""The images a run uses, on its training device: resident, or streamed from the cache.

A run needs its training subset, the validation split and the test split. When those fit the
worker's memory budget they are *resident*: on a GPU, copied to the device once per run; on a
CPU, the cache's read-only memory map itself (pages shared by every worker of the machine, no
copy per worker). When they do not fit, they are *streamed*: a background thread reads the next
few batches from the cache file in index-sorted order (one ``preadv`` per run of consecutive
images, straight into pinned host memory on CUDA) and hands them to the device ahead of need.

Both kinds give the training loop the same uint8 batches in the same order, so a streamed run
computes exactly what the resident run computes (``tests/test_stream.py``); the augmentation is
the loop's, on the device, unchanged.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from study.config import parse_bytes

IOV_MAX = 1024  # buffers one preadv call may scatter into (Linux's limit)
CHUNK_BYTES = 32 * 2**20  # a streamed read: several batches at once, sorted by position in the file
PREFETCH_CHUNKS = 2  # chunks read ahead of the loop


def default_budget(device: torch.device) -> int:
    """Half the device's free memory now: GPU memory on CUDA, available RAM on a CPU. The other
    half is left to the model, its activations and the machine's other work."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024 // 2
    except (OSError, KeyError, ValueError):  # not Linux
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def memory_budget(text: str, device: torch.device) -> int:
    """The budget in bytes: ``text`` parsed, or the device's default when it is empty."""
    return parse_bytes(text) if text else default_budget(device)


class ImageFile:
    """The cache's ``images.npy`` (uint8 N, H, W, 3) read by offset with ``preadv``: pages come
    through the OS page cache and are never mapped into the process, so streaming does not grow
    a worker's resident memory."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4:
            raise ValueError(f"{self.path} is not a C-ordered uint8 (N, H, W, C) array")
        self.shape = tuple(shape)
        self.row_bytes = int(np.prod(shape[1:]))
        self._fd = os.open(self.path, os.O_RDONLY)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def __getstate__(self) -> dict:  # a worker process opens its own descriptor
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def read_into(self, indices: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[i]`` with image ``indices[i]``, reading the file in ascending order: one
        ``preadv`` per run of consecutive images scatters them to their rows of ``out``."""
        indices = np.asarray(indices, dtype=np.int64)
        flat = out.reshape(len(indices), self.row_bytes)
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for run in np.split(np.arange(len(ordered)), breaks):
            for start in range(0, len(run), IOV_MAX):
                part = run[start : start + IOV_MAX]
                rows = order[part]
                if len(rows) > 1 and np.all(np.diff(rows) == 1):  # consecutive in out too: one buffer
                    buffers = [memoryview(flat[rows[0] : rows[-1] + 1]).cast("B")]
                else:
                    buffers = [memoryview(flat[r]) for r in rows]
                want = len(part) * self.row_bytes
                got = os.preadv(self._fd, buffers, self.offset + int(ordered[part[0]]) * self.row_bytes)
                if got != want:
                    raise OSError(f"{self.path} is truncated: read {got} of {want} bytes at image {ordered[part[0]]}")


Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images (B, H, W, 3) and int64 labels (B,), on the device


@dataclass
class TrainData:
    """Resident images: everything a run uses, on its device, with their labels.

    On a GPU only the rows a run uses are copied (``rows`` maps a dataset index to its row); on a
    CPU ``images`` is the cache's memory map itself (a view, not a copy). Batches are index slices.
    """

    images: torch.Tensor  # uint8 (R, H, W, 3)
    labels: torch.Tensor  # int64 (N,): every dataset index
    num_classes: int
    hflip: bool = True
    rows: torch.Tensor | None = None  # int64 (N,): row of ``images`` holding each dataset index

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        device: torch.device,
        hflip: bool = True,
        indices: np.ndarray | None = None,
    ) -> TrainData:
        """The (memory-mapped) arrays on ``device``: all of them, or only ``indices`` (copied in
        slices, so the host never holds a second copy of more than one slice)."""
        labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        with warnings.catch_warnings():  # a read-only memmap is only ever read
            warnings.simplefilter("ignore", UserWarning)
            if indices is None or device.type == "cpu":
                # On a CPU the memory map is used in place: workers share its pages.
                return cls(torch.from_numpy(np.ascontiguousarray(images)).to(device), labels_t, num_classes, hflip)
        needed = np.unique(np.asarray(indices, dtype=np.int64))
        out = torch.empty((len(needed), *images.shape[1:]), dtype=torch.uint8, device=device)
        step = max(1, CHUNK_BYTES // max(1, int(np.prod(images.shape[1:]))))
        for start in range(0, len(needed), step):
            part = needed[start : start + step]
            out[start : start + len(part)].copy_(torch.from_numpy(np.asarray(images[part])))
        rows = torch.full((len(labels),), -1, dtype=torch.long)
        rows[torch.from_numpy(needed)] = torch.arange(len(needed))
        return cls(out, labels_t, num_classes, hflip, rows.to(device))

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 images at dataset ``indices`` (index_select copies whole rows: on a CPU six
        times faster than indexing with ``images[indices]``)."""
        if self.rows is not None:
            indices = self.rows[indices]
        return self.images.index_select(0, indices)

    def labels_of(self, indices: np.ndarray) -> np.ndarray:
        return self.labels[torch.as_tensor(np.asarray(indices), device=self.labels.device)].cpu().numpy()

    def train_batches(self, train_idx: np.ndarray, order, device: torch.device) -> BatchStream:
        """The run's endless stream of training batches: ``order`` (a ``BatchOrder``) over
        positions of ``train_idx``."""
        return _ResidentStream(self, torch.as_tensor(np.asarray(train_idx), dtype=torch.long).to(device), order, device)

    def eval_batches(self, indices: np.ndarray, batch: int) -> Iterator[Batch]:
        """Batches of the images at ``indices``, in order."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.labels.device)
        for start in range(0, len(idx), batch):
            part = idx[start : start + batch]
            yield self.batch(part), self.labels[part]


class BatchStream:
    """Training batches, taken an epoch at a time; ``close`` ends any reading ahead."""

    def take(self, steps: int) -> Iterator[Batch]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ResidentStream(BatchStream):
    def __init__(self, data: TrainData, train_idx: torch.Tensor, order, device: torch.device):
        self.data, self.train_idx, self.order, self.device = data, train_idx, order, device

    def take(self, steps: int) -> Iterator[Batch]:
        # An epoch's positions go to the device at once, so the loop never waits for a copy.
        positions = self.order.take(steps, self.device)
        for i in range(steps):
            idx = self.train_idx[positions[i]]
            yield self.data.batch(idx), self.data.labels[idx]


@dataclass
class StreamedData:
    """Images read from the cache file as the run goes, a few batches ahead of the loop.

    ``chunk_bytes`` is how much one read takes in (several batches, sorted by file position);
    at most ``PREFETCH_CHUNKS + 2`` chunks are held at a time, on the host and on the device.
    """

    file: ImageFile
    labels: np.ndarray  # int64 (N,)
    num_classes: int
    device: torch.device
    hflip: bool = True
    chunk_bytes: int = CHUNK_BYTES

    @property
    def image_size(self) -> int:
        return int(self.file.shape[1])

    def labels_of(self, indices: np.ndarray) -> np.ndarray:
        return self.labels[np.asarray(indices)]

    def _rows_per_chunk(self, batch: int) -> int:
        return max(1, self.chunk_bytes // (batch * self.file.row_bytes)) * batch

    def train_batches(self, train_idx: np.ndarray, order, device: torch.device) -> BatchStream:
        train_idx = np.asarray(train_idx, dtype=np.int64)
        steps = self._rows_per_chunk(order.batch) // order.batch
        cpu = torch.device("cpu")

        def chunks() -> Iterator[np.ndarray]:
            while True:  # the same endless position stream the resident loop takes
                yield train_idx[order.take(steps, cpu).numpy()].reshape(-1)

        return _Prefetcher(self, chunks(), order.batch, steps * order.batch)

    def eval_batches(self, indices: np.ndarray, batch: int) -> Iterator[Batch]:
        indices = np.asarray(indices, dtype=np.int64)
        rows = self._rows_per_chunk(batch)
        stream = _Prefetcher(self, (indices[s : s + rows] for s in range(0, len(indices), rows)), batch, rows)
        try:
            yield from stream.take(-(-len(indices) // batch))
        finally:
            stream.close()

    def read(self, indices: np.ndarray, host: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels at ``indices`` on the device, read into ``host`` (on a CPU, a
        reused buffer of at least ``len(indices)`` rows) or into new pinned memory on CUDA."""
        pin = self.device.type == "cuda"
        if host is None:
            host = torch.empty((len(indices), *self.file.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        host = host[: len(indices)]
        self.file.read_into(indices, host.numpy())
        labels = torch.from_numpy(self.labels[indices])
        if not pin:
            return host, labels
        return host.to(self.device, non_blocking=True), labels.pin_memory().to(self.device, non_blocking=True)


class _Prefetcher(BatchStream):
    """Reads chunks of dataset indices on a background thread (on CUDA, copying them on a side
    stream); ``take`` hands their batches out in order."""

    def __init__(self, data: StreamedData, chunks: Iterator[np.ndarray], batch: int, rows: int):
        self.batch, self.rows = batch, rows  # rows: the most images a chunk holds
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_CHUNKS)
        self._stop = threading.Event()
        self._pending: list[Batch] = []
        self._thread = threading.Thread(target=self._fill, args=(data, chunks), daemon=True)
        self._thread.start()

    def _fill(self, data: StreamedData, chunks: Iterator[np.ndarray]) -> None:
        cuda = data.device.type == "cuda"
        try:
            with torch.cuda.device(data.device) if cuda else contextlib.nullcontext():  # this thread's GPU
                side = torch.cuda.Stream() if cuda else None
                ring: list[torch.Tensor] = []  # CPU: buffers reused in turn, so memory stays flat
                for k, indices in enumerate(chunks):
                    if cuda:  # pinned buffers come from torch's host cache, reused once their copy is done
                        with torch.cuda.stream(side):
                            x, y = data.read(indices)
                            ready = torch.cuda.Event()
                            ready.record(side)
                        item = (x, y, ready)
                    else:
                        # A chunk's buffer comes round again after PREFETCH_CHUNKS + 2 chunks: by then the
                        # loop has taken the next chunk from the queue, so it is done with this one.
                        if len(ring) < PREFETCH_CHUNKS + 2:
                            ring.append(torch.empty((self.rows, *data.file.shape[1:]), dtype=torch.uint8))
                        item = (*data.read(indices, ring[k % len(ring)]), None)
                    if not self._put(item):
                        return
            self._put(None)  # a finite stream (evaluation) ends
        except BaseException as exc:  # handed to the loop, which raises it
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _next_chunk(self) -> None:
        item = self._queue.get()
        if item is None:
            raise RuntimeError("the streamed images ended before the batches asked for")
        if isinstance(item, BaseException):
            raise item
        x, y, ready = item
        if ready is not None:  # the loop's stream waits for the side stream's copy, not the host
            current = torch.cuda.current_stream(x.device)
            current.wait_event(ready)
            x.record_stream(current)
            y.record_stream(current)
        self._pending = [(x[s : s + self.batch], y[s : s + self.batch]) for s in range(0, len(y), self.batch)]

    def take(self, steps: int) -> Iterator[Batch]:
        for _ in range(steps):
            if not self._pending:
                self._next_chunk()
            yield self._pending.pop(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class ImageSource:
    """A worker's view of the cached dataset: for each run, the images it uses, resident when
    they fit ``budget`` bytes, else streamed from ``path`` (the cache's images.npy)."""

    images: np.ndarray  # the read-only memory map
    labels: np.ndarray
    num_classes: int
    device: torch.device
    budget: int
    hflip: bool = True
    path: str = ""  # images.npy the memory map reads; empty for arrays held in memory
    decisions: list[str] = field(default_factory=list)  # "resident" | "streamed", per run, for tests and logs

    def needs_streaming(self, *index_sets: np.ndarray) -> bool:
        needed = len(np.unique(np.concatenate([np.asarray(s) for s in index_sets])))
        return bool(self.path) and needed * int(np.prod(self.images.shape[1:])) > self.budget

    def for_run(self, *index_sets: np.ndarray) -> TrainData | StreamedData:
        """The images of the union of ``index_sets`` (subset, validation, test) for one run."""
        if self.needs_streaming(*index_sets):
            self.decisions.append("streamed")
            return StreamedData(
                ImageFile(self.path),
                np.asarray(self.labels, dtype=np.int64),
                self.num_classes,
                self.device,
                self.hflip,
                # Training and evaluation each hold PREFETCH_CHUNKS + 2 chunks: a quarter of the budget each.
                chunk_bytes=max(1, min(CHUNK_BYTES, self.budget // (4 * (PREFETCH_CHUNKS + 2)))),
            )
        self.decisions.append("resident")
        return TrainData.from_arrays(
            self.images,
            self.labels,
            self.num_classes,
            self.device,
            self.hflip,
            indices=np.concatenate([np.asarray(s) for s in index_sets]),
        )


def image_source(dataset, device: torch.device, budget: int) -> ImageSource:
    """The worker's ``ImageSource`` for a ``study.datasets.Dataset``."""
    path = getattr(dataset.images, "filename", None) or ""
    return ImageSource(dataset.images, dataset.labels, dataset.num_classes, device, budget, dataset.hflip, str(path))


RunData = TrainData | StreamedData
