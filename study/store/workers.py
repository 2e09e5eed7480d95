"""Who works on a study: worker names (``host:pid``), whether a named worker's process is
still alive on this host, and the heartbeat a busy worker sends while it holds a run or a
tuning job."""

from __future__ import annotations

import os
import socket
import threading

from study.store.schema import RunRow


def worker_host() -> str:
    """This machine's name in worker names: ``$STUDY_WORKER_HOST`` or the host name. Set it where
    machines share a host name but not their processes (containers on the host's network)."""
    return os.environ.get("STUDY_WORKER_HOST") or socket.gethostname()


def worker_id() -> str:
    """``host:pid`` (``host:pid:t<thread id>`` off the main thread, as in a dask worker running
    several tasks at once), so a run held by a dead process on this host can be recognised."""
    name = f"{worker_host()}:{os.getpid()}"
    if threading.current_thread() is not threading.main_thread():
        name += f":t{threading.get_native_id()}"
    return name


def dead_here(worker: str | None) -> bool:
    """Whether ``worker`` names a process of this host that no longer exists."""
    host, _, rest = (worker or "").partition(":")
    pid = rest.split(":")[0]
    return host == worker_host() and pid.isdigit() and not _pid_alive(int(pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Heartbeat:
    """Refreshes a run's (or tuning job's) claim from a background thread while it works."""

    def __init__(self, store, run_id: int, worker: str, interval: float, table: type = RunRow):
        self._store, self._run_id, self._worker, self._interval, self._table = store, run_id, worker, interval, table
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._store.heartbeat(self._run_id, self._worker, table=self._table)
            except Exception:  # a missed beat is retried; the grace period covers several
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
