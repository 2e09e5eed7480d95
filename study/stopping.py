"""Clean stops of ``study run`` and ``study worker``: the first SIGINT (Ctrl-C) or SIGTERM raises
``Stopped`` in the main thread, so the command hands its in-flight runs and trials back to the
store and says how to resume; a second signal exits at once.

Worker processes of a local pool ignore SIGINT (a Ctrl-C reaches the terminal's whole process
group): the main process stops them and hands their work back, so there is one orderly stop
instead of a traceback per process.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from study.masking import mask_urls

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The command was asked to stop by ``signum``; ``handed_back`` says what went back to the store."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.handed_back: dict[str, int] = {}

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by that signal


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside: the first SIGINT or SIGTERM raises ``Stopped``; a second ends the process at
    once (its claims are then taken back by the next command, as a dead worker's are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, _frame) -> None:  # noqa: ANN001
        if received:
            os.write(2, b"study: stopped at once; the next command takes back what was in flight\n")
            os._exit(128 + signum)
        received.append(signum)
        raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def ignore_interrupts() -> None:
    """In a pool's worker process: leave Ctrl-C to the main process, which stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def say_stopped(stop: Stopped, argv: list[str]) -> None:
    """One line on stderr: what the stop handed back to the store, and the command that resumes."""
    handed = stop.handed_back
    what = (
        f"{handed.get('runs', 0)} run(s), {handed.get('tuning_jobs', 0)} tuning job(s) and "
        f"{handed.get('trials', 0)} trial(s) to rerun handed back to the store"
        if handed
        else "nothing was in flight"
    )
    print(
        f"study: stopped by {stop}: {what}; resume with: python -m study {mask_urls(shlex.join(argv))}", file=sys.stderr
    )
