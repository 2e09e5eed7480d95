"""What this machine offers a study, and what it was: its cores, the plan of worker processes
and torch threads over them, the dask client of a cluster, a run's peak memory, and the
environment record stored with every run.

Importing it does not import torch (the functions that need it import it).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from study.config import StudyConfig
from study.errors import UserError

if TYPE_CHECKING:
    import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_workers(jobs: int, device: str, pending: int, threads: int = 0) -> tuple[int, int]:
    """(worker processes, torch threads per worker), never oversubscribing the cores.

    On a GPU one worker owns the device. On CPU every run trains with ``threads`` torch threads
    (``--threads``; 0 means one), whatever the worker: the thread count changes how a run's sums
    are split and so its rounding, which grows over hundreds of steps into a different plateau
    stop (MobileViT-XXS on 116 digits stopped at 160 steps on one thread and 240 on two). So
    ``jobs=0`` uses as many workers as the cores hold at that thread count (never more than
    there are runs); a tail of fewer runs than cores leaves cores idle rather than change results.
    """
    cores = available_cores()
    if device == "cuda":
        workers = max(1, min(jobs or 1, max(1, pending)))
        return workers, threads or max(1, cores // workers)
    threads = threads or 1
    workers = jobs or max(1, cores // threads)
    return max(1, min(workers, max(1, pending))), threads


def torch_threads(cfg: StudyConfig, threads: int = 0) -> int:
    """Torch threads for a task here: ``cfg.threads``, else ``threads`` (planned by the main
    process), else one on CPU (results must not depend on the worker, see ``plan_workers``) and
    this machine's cores shared among the dask worker's threads on a GPU."""
    if cfg.threads or threads:
        return cfg.threads or threads
    if not _uses_cuda(cfg.device):
        return 1
    try:
        from distributed import get_worker

        return max(1, available_cores() // get_worker().state.nthreads)
    except (ImportError, ValueError):  # not in a dask worker
        return available_cores()


def _uses_cuda(device: str) -> bool:
    if device != "auto":
        return device == "cuda"
    import torch

    return torch.cuda.is_available()


def dask_client(address: str):
    """A dask.distributed client of the scheduler at ``address``; a missing package or an
    unreachable scheduler is the user's to fix."""
    try:
        from distributed import Client
    except ImportError:
        raise UserError(
            "backend 'dask' needs dask.distributed: pip install 'study[distributed]' (on every machine of the cluster)"
        ) from None
    try:
        _probe(address)
        return Client(address, timeout=15)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(
            f"cannot reach the dask scheduler at {address!r} "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "start one with `dask scheduler` and give its address, e.g. --scheduler tcp://head-node:8786"
        ) from None


def _probe(address: str) -> None:
    """Fail at once on a TCP address nobody listens on (the client would retry for its whole
    timeout first); other schemes are left to the client."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme == "tcp" and parts.hostname and parts.port:
        socket.create_connection((parts.hostname, parts.port), timeout=5).close()


class PeakMemory:
    """Peak memory of one run, from the moment this object is made.

    On CUDA: the caching allocator's peak (the dataset resident on the GPU included). On CPU
    (Linux): the process's peak resident set (VmHWM), reset at the start through
    ``/proc/self/clear_refs``, so a worker's later runs are not charged with its earlier ones'
    peaks (torch's memory is invisible to tracemalloc). Where that reset is not possible the
    process's lifetime peak is reported, an upper bound.
    """

    def __init__(self, device: torch.device):
        import torch

        self.device = device
        self.reset = True
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            self.reset = _reset_peak_rss()

    def peak_mb(self) -> float:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm_kib = _status_kib("VmHWM")
        if hwm_kib is not None:
            return hwm_kib / 1024
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size
        return True
    except OSError:
        return False


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def environment(device: str = "cpu") -> dict:
    """Versions, device and host of the process running a run, so results can be reproduced."""
    import numpy
    import timm
    import torch

    import study

    env = {
        "python": sys.version.split()[0],
        "study": study.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "host": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env
