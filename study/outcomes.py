"""What a worker's task reports back to the process that shows progress: one run, or one
worker's share of tuning one cell. Small and picklable (they cross process boundaries)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunOutcome:
    """One claimed run: ``done`` (recorded), ``failed`` (recorded with its error) or ``lost``
    (another worker took it over meanwhile)."""

    cell: str
    status: str = "failed"
    test_acc: float | None = None
    error: str = ""


@dataclass
class TuningOutcome:
    """A worker's time on one tuning job (``cell`` is its Optuna study's name): ``tuned`` (this
    worker closed it, best trial fixed), ``failed``, ``helped`` (its last trials run elsewhere)
    or ``closed`` (another worker closed it first). Trial counts are the Optuna study's."""

    cell: str
    status: str = "failed"
    trials_run: int = 0  # by this worker
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    error: str = ""


Outcome = RunOutcome | TuningOutcome
