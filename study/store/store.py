"""The study's one SQL database (SQLAlchemy): studies, runs, per-epoch metrics and test
predictions, tuning jobs, and Optuna's own tables beside them. It is the only thing that
``study/`` and ``analysis/`` share, so this module imports no torch.

Work is claimed from the store: a worker marks a pending run as its own in one transaction
(``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, SQLite's write lock on one machine, and a
conditional UPDATE on both), so parallel workers (processes or machines) never run the same cell
twice. The holder refreshes a heartbeat; a run whose worker died (a dead process on this host, or
no heartbeat for a grace period) is returned to pending and claimed again, and only the holder
may record it. A finished run is written in one transaction. A run whose (arm, size) has a
tuning job waits until that job is done; several workers may tune one cell together (see
study/tune.py). Every worker process has a row in ``workers``: what it does and when it was last
heard from. Timestamps that workers compare come from the database's clock, not each machine's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, inspect, select, update
from sqlalchemy.orm import Session, sessionmaker

from study.errors import UserError
from study.masking import mask_urls, masked_url
from study.store.claims import RunClaims
from study.store.engine import missing_sqlite_file, open_database, retry_conflicts
from study.store.records import StudyRecords
from study.store.schema import (
    STATUSES,
    UNFINGERPRINTED,
    RunRow,
    StudyRow,
    WorkerRow,
    db_now,
    is_control,
)


class Store(RunClaims, StudyRecords):
    """Access to one study database: its studies and workers here; claims (runs, tuning jobs) in
    ``claims.py``; the other records in ``records.py``."""

    def __init__(self, url: str, create: bool = True):
        self.url = url
        self.engine = open_database(url, create)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            self.engine.execution_options(sqlite_immediate=True), expire_on_commit=False
        )

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """A session whose work is committed as one transaction, or rolled back on error.
        ``write``: the transaction reads and then writes, so on SQLite it takes the write lock
        first (PostgreSQL locks the rows it claims instead)."""
        with (self._write_sessions if write else self._sessions)() as s, s.begin():
            yield s

    # -- studies ------------------------------------------------------------------------------
    def open_study(
        self, name: str, fingerprint: str, settings: dict, config: dict, dataset: dict, splits: dict, y_test: np.ndarray
    ) -> int:
        """Create study ``name`` or reopen it; refuse settings that would mix incompatible results."""

        def open_or_create() -> int:
            with self.session(write=True) as s:
                row = s.scalar(select(StudyRow).where(StudyRow.name == name))
                if row is None:
                    row = StudyRow(
                        name=name,
                        fingerprint=fingerprint,
                        settings=settings,
                        config=config,
                        dataset=dataset,
                        splits=splits,
                        y_test=np.asarray(y_test, np.int32).tobytes(),
                    )
                    s.add(row)
                    s.flush()
                    return row.id
                self._refuse_other_settings(row, fingerprint, settings)
                row.config = config
                # Arms added to the study join those already in it (the fingerprint leaves arms out).
                row.settings = {**settings, "arms": {**self._stored_arms(s, row), **settings.get("arms", {})}}
                return row.id

        return retry_conflicts(open_or_create)  # workers starting together create it once

    def join_study(self, name: str, fingerprint: str, settings: dict) -> int:
        """The id of existing study ``name``, after checking this worker's settings and data
        give the same fingerprint (``study worker``: it plans nothing)."""
        row = self.study(name)
        if row is None:
            names = ", ".join(repr(n) for n in self.study_names()) or "none"
            raise UserError(
                f"no study {name!r} in {masked_url(self.url)} (studies there: {names}); "
                "start it with `python -m study run`, or pass --name"
            )
        self._refuse_other_settings(row, fingerprint, settings)
        return row.id

    def _refuse_other_settings(self, row: StudyRow, fingerprint: str, settings: dict) -> None:
        """Refuse settings whose fingerprint differs, and an arm of the study whose own settings
        differ; new arms are welcome (they only add cells)."""
        if row.fingerprint != fingerprint:
            shared = ({k: v for k, v in d.items() if k not in UNFINGERPRINTED} for d in (row.settings, settings))
            key, old, new = _first_difference(*shared)
            raise UserError(
                f"study {row.name!r} in {masked_url(self.url)} was run with {key}={old!r}, "
                f"this config has {key}={new!r}; use the same settings to resume, or --name NEW for a separate study"
            )
        with self.session() as s:
            stored = self._stored_arms(s, row)
        for name, arm in sorted(settings.get("arms", {}).items()):
            if name in stored and stored[name] != arm:
                key, old, new = _first_difference(stored[name], arm)
                raise UserError(
                    f"arm {name!r} of study {row.name!r} in {self.url} was run with {key}={old!r}, this config has "
                    f"{key}={new!r}; an arm's settings cannot change: give the changed arm a new name, or use --name "
                    "NEW for a separate study"
                )

    @staticmethod
    def _stored_arms(s: Session, row: StudyRow) -> dict[str, dict]:
        """The arms a study was run with: from its settings, or (written before arms) one per
        model of its runs, named after it and trained with the study's ``[train]``."""
        if "arms" in row.settings:
            return dict(row.settings["arms"])
        models = s.scalars(select(RunRow.model).where(RunRow.study_id == row.id).distinct())
        return {model: {"model": model} for model in models}

    def study(self, name: str) -> StudyRow | None:
        with self.session() as s:
            return s.scalar(select(StudyRow).where(StudyRow.name == name))

    def study_names(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(StudyRow.name).order_by(StudyRow.id)))

    def now(self) -> datetime:
        """The database's clock (UTC), against which heartbeats are judged."""
        with self.session() as s:
            return s.scalar(select(db_now()))

    # -- workers ------------------------------------------------------------------------------
    def register_worker(self, study_id: int, worker: str) -> None:
        """Record (or re-record) a worker process of the study."""

        def register() -> None:
            with self.session(write=True) as s:
                row = s.scalar(select(WorkerRow).where(WorkerRow.study_id == study_id, WorkerRow.name == worker))
                if row is None:
                    s.add(
                        WorkerRow(
                            study_id=study_id,
                            name=worker,
                            host=worker.split(":")[0],
                            started_at=db_now(),
                            heartbeat_at=db_now(),
                            doing="starting",
                        )
                    )
                else:
                    row.started_at, row.heartbeat_at, row.doing = db_now(), db_now(), "starting"

        retry_conflicts(register)

    def worker_doing(self, study_id: int, worker: str, doing: str, trials_done: int = 0) -> None:
        """Say what a worker does now (and that it is alive); ``trials_done`` adds to its count."""
        with self.session() as s:
            s.execute(
                update(WorkerRow)
                .where(WorkerRow.study_id == study_id, WorkerRow.name == worker)
                .values(
                    doing=mask_urls(doing)[:500], heartbeat_at=db_now(), trials_done=WorkerRow.trials_done + trials_done
                )
            )

    def workers(self, study_id: int) -> list[WorkerRow]:
        """The study's worker processes, most recently heard from first; none in a database
        written before workers were recorded."""
        if not inspect(self.engine).has_table(WorkerRow.__tablename__):
            return []
        with self.session() as s:
            return list(
                s.scalars(
                    select(WorkerRow)
                    .where(WorkerRow.study_id == study_id)
                    .order_by(WorkerRow.heartbeat_at.desc(), WorkerRow.id)
                )
            )

    def counts(self, study_id: int) -> dict[str, int]:
        """Number of runs in each status."""
        with self.session() as s:
            rows = s.execute(
                select(RunRow.status, func.count()).where(RunRow.study_id == study_id).group_by(RunRow.status)
            ).all()
        out = {k: 0 for k in STATUSES}
        out.update({status: n for status, n in rows})
        return out

    def runs(self, study_id: int, status: str | None = None) -> list[RunRow]:
        with self.session() as s:
            q = select(RunRow).where(RunRow.study_id == study_id)
            if status:
                q = q.where(RunRow.status == status)
            return list(s.scalars(q.order_by(RunRow.id)))


def _first_difference(old: dict, new: dict, prefix: str = "") -> tuple[str, Any, Any]:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found[0]:
                return found
        elif a != b:
            return f"{prefix}{key}", a, b
    return "", None, None


def study_to_join(
    url: str, name: str | None, wait: float, on_wait: Callable[[], None] | None = None
) -> tuple[Store | None, str | None, list[str]]:
    """(the store, the study a worker joins, the studies in the store): ``name``, or the store's
    only study, polled for up to ``wait`` seconds. The store is None while its SQLite file does
    not exist (a worker never creates one), the study None while there is none such.
    ``on_wait`` is called once, when the polling starts (to say so)."""
    deadline = time.monotonic() + wait
    store: Store | None = None
    while True:
        if store is None and missing_sqlite_file(url) is None:
            store = Store(url)
        # A budget control (study.budget_control) belongs to its study: never the only one to join.
        names = [n for n in store.study_names() if not is_control(n)] if store is not None else []
        chosen = name or (names[0] if len(names) == 1 else None)
        if chosen in names or time.monotonic() >= deadline:
            return store, (chosen if chosen in names else None), names
        if on_wait is not None:
            on_wait()
            on_wait = None
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
