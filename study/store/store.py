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
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import exists, func, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from study.errors import UserError
from study.masking import mask_urls, masked_url
from study.store.engine import missing_sqlite_file, open_database, retry_conflicts
from study.store.schema import (
    DONE,
    FAILED,
    MAX_ATTEMPTS,
    PENDING,
    RUNNING,
    STATUSES,
    Base,
    Cell,
    Claimable,
    DeploymentRow,
    EpochRow,
    LayoutChoiceRow,
    ModelCostRow,
    PredictionRow,
    RunRow,
    RunWeightsRow,
    SequentialRoundRow,
    StudyRow,
    TuningJobRow,
    WorkerRow,
    db_now,
    is_control,
)
from study.store.workers import dead_here


class Store:
    """Access to one study database."""

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
            shared = ({k: v for k, v in d.items() if k != "arms"} for d in (row.settings, settings))
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

    # -- runs ---------------------------------------------------------------------------------
    def add_cells(self, study_id: int, cells: list[tuple[Cell, int, float]]) -> int:
        """Add (cell, n_train, fraction) rows that are not in the store yet; returns how many."""

        def add() -> int:
            with self.session(write=True) as s:
                existing = set(s.scalars(select(RunRow.cell_key).where(RunRow.study_id == study_id)))
                new = [_run_row(study_id, c, n, frac) for c, n, frac in cells if c.key not in existing]
                s.add_all(new)
                return len(new)

        return retry_conflicts(add)

    def release_stale(self, study_id: int, grace_seconds: float) -> int:
        """Return to pending the runs whose worker is gone: a dead process on this host, or no
        heartbeat for ``grace_seconds`` by the database's clock. A run whose worker died
        ``MAX_ATTEMPTS`` times (killed for memory each time, say) is failed instead, so one run
        cannot take every worker down in turn. Tuning jobs without any heartbeat for the grace
        period go back to pending too (their trials are judged by Optuna's own heartbeats).
        Returns how many runs and jobs were released or failed.

        Every worker calls this before each claim, and nearly always nothing is stale: the
        candidates are found by a read, and only when there are any is a write lock taken
        (on SQLite, a write transaction would queue every worker behind every other)."""
        with self.session() as s:
            cutoff = s.scalar(select(db_now())) - timedelta(seconds=grace_seconds)
            stale = []
            for table in (RunRow, TuningJobRow):
                for row in s.execute(
                    select(table.id, table.worker, table.heartbeat_at, table.attempts).where(
                        table.study_id == study_id, table.status == RUNNING
                    )
                ):
                    silent = row.heartbeat_at is None or row.heartbeat_at < cutoff
                    if silent or (table is RunRow and dead_here(row.worker)):
                        stale.append((table, row, silent))
        if not stale:
            return 0
        released = 0
        with self.session(write=True) as s:
            # In id order, so that workers releasing at once lock rows in one order (no deadlock).
            for table, row, silent in sorted(stale, key=lambda t: (t[0].__tablename__, t[1].id)):
                values: dict[str, Any] = {"status": PENDING, "worker": None}
                if table is RunRow and row.attempts >= MAX_ATTEMPTS:
                    values = {
                        "status": FAILED,
                        "finished_at": db_now(),
                        "error": f"its worker stopped {row.attempts} times before finishing it "
                        f"(last {row.worker}: killed, out of memory, "
                        "or the machine went down); run with --retry-failed to try again",
                    }
                # Conditional on the row being as read: never steal a fresh claim or a fresh heartbeat.
                query = update(table).where(table.id == row.id, table.status == RUNNING, table.worker == row.worker)
                if silent and row.heartbeat_at is not None:
                    query = query.where(table.heartbeat_at < cutoff)
                released += s.execute(query.values(**values)).rowcount
        return released

    def hand_back(self, study_id: int, worker: str) -> dict[str, int]:
        """A stopped command's work back to pending at once: the runs and tuning jobs held by
        ``worker`` (the command's own process) or by processes of this host that are gone (its
        pool's workers, stopped with it). The attempt a run used is given back too: being
        stopped is not the run's failure. Returns how many runs and tuning jobs went back."""
        handed = {"runs": 0, "tuning_jobs": 0}
        with self.session(write=True) as s:
            for table, key in ((RunRow, "runs"), (TuningJobRow, "tuning_jobs")):
                held = s.execute(
                    select(table.id, table.worker)
                    .where(table.study_id == study_id, table.status == RUNNING)
                    .order_by(table.id)
                ).all()
                for row_id, holder in held:
                    if holder != worker and not dead_here(holder):
                        continue
                    values: dict[str, Any] = {"status": PENDING, "worker": None}
                    if table is RunRow:
                        values["attempts"] = table.attempts - 1  # a claim counted one
                    res = s.execute(
                        update(table)
                        .where(table.id == row_id, table.status == RUNNING, table.worker == holder)
                        .values(**values)
                    )
                    handed[key] += res.rowcount
        return handed

    def claim(self, study_id: int, worker: str, models: list[str] | None = None) -> RunRow | None:
        """Atomically take the next pending run of the study, or None when none is left.

        A run whose (arm, size) has a tuning job that is not done yet is not claimable: its
        hyper-parameters are not known."""
        query = select(RunRow.id).where(
            RunRow.study_id == study_id,
            RunRow.status == PENDING,
            ~exists(_tuning_of(RunRow).where(TuningJobRow.status != DONE)),
        )
        if models is not None:
            query = query.where(RunRow.model.in_(models))
        return self._claim_next(RunRow, query.order_by(RunRow.size_value, RunRow.seed, RunRow.id), worker)

    def _claim_next(self, table: type[RunRow], candidates, worker: str) -> RunRow | None:
        # PostgreSQL: the candidate row is locked and rows other workers are claiming are skipped,
        # so concurrent claims take different rows without waiting (the usual job-queue idiom).
        # SQLite ignores FOR UPDATE; the transaction holds its write lock from the start (BEGIN IMMEDIATE),
        # and the conditional UPDATE keeps the claim safe on any database.
        candidates = candidates.limit(1).with_for_update(skip_locked=True, of=table)
        while True:
            with self.session(write=True) as s:
                row_id = s.scalar(candidates)
                if row_id is None:
                    return None
                res = s.execute(
                    update(table)
                    .where(table.id == row_id, table.status == PENDING)
                    .values(
                        status=RUNNING,
                        worker=worker,
                        claimed_at=db_now(),
                        heartbeat_at=db_now(),
                        attempts=table.attempts + 1,
                        error=None,
                    )
                )
                if res.rowcount == 1:
                    run = s.get(table, row_id)
                    # What the worker does, in the same transaction: one write per claim, not two.
                    s.execute(
                        update(WorkerRow)
                        .where(WorkerRow.study_id == run.study_id, WorkerRow.name == worker)
                        .values(doing=f"run {run.cell_key}"[:500], heartbeat_at=db_now())
                    )
                    return run

    def heartbeat(self, run_id: int, worker: str, table: Claimable = RunRow) -> bool:
        """Refresh a run's claim (and its worker's row); False if the run is no longer this
        worker's (taken over). A tuning job is refreshed by whichever worker tunes it."""
        with self.session() as s:
            query = update(table).where(table.id == run_id, table.status == RUNNING)
            if table is RunRow:
                query = query.where(table.worker == worker)
            res = s.execute(query.values(heartbeat_at=db_now()))
            s.execute(
                update(WorkerRow)
                .where(
                    WorkerRow.name == worker,
                    WorkerRow.study_id == select(table.study_id).where(table.id == run_id).scalar_subquery(),
                )
                .values(heartbeat_at=db_now())
            )
            return res.rowcount == 1

    def finish(
        self,
        run_id: int,
        worker: str,
        fields: dict[str, Any],
        epochs: list[dict],
        y_pred: np.ndarray,
        y_true: np.ndarray | None = None,
    ) -> bool:
        """Record a finished run, its epochs and predictions in one transaction. ``y_true``: the
        true labels of the run's own test split (``data.split_per_seed``); None: ``y_test``'s.

        Only the worker holding the claim may finish it, so a run retaken from a presumed-dead
        worker is never recorded twice. Returns whether it was recorded.
        """
        with self.session() as s:
            res = s.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.worker == worker, RunRow.status == RUNNING)
                .values(status=DONE, finished_at=db_now(), error=None, **fields)
            )
            if res.rowcount != 1:
                return False
            s.add_all(EpochRow(run_id=run_id, **e) for e in epochs)
            truth = None if y_true is None else np.asarray(y_true, np.int32).tobytes()
            s.add(PredictionRow(run_id=run_id, y_pred=np.asarray(y_pred, np.int32).tobytes(), y_true=truth))
            study_id = select(RunRow.study_id).where(RunRow.id == run_id).scalar_subquery()
            s.execute(
                update(WorkerRow)
                .where(WorkerRow.name == worker, WorkerRow.study_id == study_id)
                .values(runs_done=WorkerRow.runs_done + 1, doing="finished a run", heartbeat_at=db_now())
            )
            return True

    def fail(self, run_id: int, worker: str, error: str, table: Claimable = RunRow) -> None:
        """Record a run that raised (out of memory, a NaN loss...) with its error; the study goes
        on and ``--retry-failed`` runs it again."""
        with self.session() as s:
            s.execute(
                update(table)
                .where(table.id == run_id, table.worker == worker, table.status == RUNNING)
                .values(status=FAILED, finished_at=db_now(), error=mask_urls(error)[:4000])
            )

    def retry_failed(self, study_id: int) -> int:
        """Return failed runs and failed tuning jobs to pending, with fresh attempts; returns how many."""
        with self.session() as s:
            return sum(
                s.execute(
                    update(table)
                    .where(table.study_id == study_id, table.status == FAILED)
                    .values(status=PENDING, worker=None, attempts=0)
                ).rowcount
                for table in (RunRow, TuningJobRow)
            )

    # -- tuning jobs --------------------------------------------------------------------------
    def add_tuning_jobs(self, study_id: int, jobs: list[tuple]) -> int:
        """Add (optuna study name, model, size kind, size value[, arm]) jobs not in the store yet;
        the arm defaults to the model."""

        def add() -> int:
            with self.session(write=True) as s:
                existing = set(s.scalars(select(TuningJobRow.optuna_study).where(TuningJobRow.study_id == study_id)))
                new = [
                    TuningJobRow(
                        study_id=study_id,
                        optuna_study=name,
                        arm=arm[0] if arm else model,
                        model=model,
                        size_kind=kind,
                        size_value=value,
                    )
                    for name, model, kind, value, *arm in jobs
                    if name not in existing
                ]
                s.add_all(new)
                return len(new)

        return retry_conflicts(add)

    def open_tuning_jobs(self, study_id: int) -> list[TuningJobRow]:
        """Tuning jobs that workers may join (pending, or running with others), smallest sizes first."""
        with self.session() as s:
            q = select(TuningJobRow).where(
                TuningJobRow.study_id == study_id, TuningJobRow.status.in_((PENDING, RUNNING))
            )
            return list(s.scalars(q.order_by(TuningJobRow.size_value, TuningJobRow.id)))

    def join_tuning(self, job_id: int, worker: str) -> bool:
        """Mark a tuning job as being tuned (by ``worker`` among others); False if it was closed."""
        with self.session() as s:
            res = s.execute(
                update(TuningJobRow)
                .where(TuningJobRow.id == job_id, TuningJobRow.status.in_((PENDING, RUNNING)))
                .values(
                    status=RUNNING,
                    worker=worker,
                    claimed_at=func.coalesce(TuningJobRow.claimed_at, db_now()),
                    heartbeat_at=db_now(),
                )
            )
            return res.rowcount == 1

    def tuning_status(self, job_id: int) -> str | None:
        with self.session() as s:
            return s.scalar(select(TuningJobRow.status).where(TuningJobRow.id == job_id))

    def close_tuning(self, job_id: int, status: str, error: str | None = None) -> bool:
        """Mark a tuning job done (its cell's runs may start) or failed (they wait); whichever
        worker sees the cell's budget spent closes it. Returns whether this call closed it."""
        with self.session() as s:
            res = s.execute(
                update(TuningJobRow)
                .where(TuningJobRow.id == job_id, TuningJobRow.status.in_((PENDING, RUNNING)))
                .values(status=status, finished_at=db_now(), error=mask_urls(error)[:4000] if error else None)
            )
            return res.rowcount == 1

    def tuning_jobs(self, study_id: int) -> list[TuningJobRow]:
        """The study's tuning jobs; none in a database written before tuning existed."""
        if not inspect(self.engine).has_table(TuningJobRow.__tablename__):
            return []
        with self.session() as s:
            q = select(TuningJobRow).where(TuningJobRow.study_id == study_id)
            return list(s.scalars(q.order_by(TuningJobRow.size_value, TuningJobRow.model)))

    def tuning_counts(self, study_id: int) -> dict[str, int]:
        """Number of tuning jobs in each status."""
        with self.session() as s:
            rows = s.execute(
                select(TuningJobRow.status, func.count())
                .where(TuningJobRow.study_id == study_id)
                .group_by(TuningJobRow.status)
            ).all()
        return {**{k: 0 for k in STATUSES}, **dict(rows)}

    def waiting_on_tuning(self, study_id: int) -> bool:
        """Whether some pending run waits for a tuning job that is pending or running (not failed)."""
        open_jobs = _tuning_of(RunRow).where(TuningJobRow.status.in_((PENDING, RUNNING)))
        with self.session() as s:
            return (
                s.scalar(
                    select(RunRow.id)
                    .where(RunRow.study_id == study_id, RunRow.status == PENDING, exists(open_jobs))
                    .limit(1)
                )
                is not None
            )

    def others_working(self, study_id: int) -> bool:
        """Whether a worker that found nothing to claim should wait: some run is still held by a
        worker (which may die and leave it to be taken over), or waits for a cell being tuned."""
        with self.session() as s:
            running = (
                s.scalar(select(RunRow.id).where(RunRow.study_id == study_id, RunRow.status == RUNNING).limit(1))
                is not None
            )
        return running or self.waiting_on_tuning(study_id)

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

    # -- sequential studies (--until-ci) ------------------------------------------------------
    def sequential_rounds(self, study_id: int) -> list[SequentialRoundRow]:
        """The study's sequential decisions in order; none in a database written before them."""
        if not inspect(self.engine).has_table(SequentialRoundRow.__tablename__):
            return []
        with self.session() as s:
            q = select(SequentialRoundRow).where(SequentialRoundRow.study_id == study_id)
            return list(s.scalars(q.order_by(SequentialRoundRow.round)))

    def add_round(
        self,
        study_id: int,
        reason: str,
        cells: list[tuple[Cell, int, float]],
        short: list[dict],
        target: dict,
        spent_hours: float,
    ) -> int:
        """Record one sequential decision and add its (cell, n_train, fraction) runs, in one
        transaction: a killed study finds both or neither. A stop that repeats the latest
        decision (a resumed study that stops again for the same reason) adds no row. Returns
        how many runs were added."""
        with self.session(write=True) as s:
            existing = set(s.scalars(select(RunRow.cell_key).where(RunRow.study_id == study_id)))
            new = [(c, n, frac) for c, n, frac in cells if c.key not in existing]
            last = s.scalar(
                select(SequentialRoundRow)
                .where(SequentialRoundRow.study_id == study_id)
                .order_by(SequentialRoundRow.round.desc())
                .limit(1)
            )
            if not new and last is not None and (last.reason, last.target, last.short) == (reason, target, short):
                return 0
            s.add(
                SequentialRoundRow(
                    study_id=study_id,
                    round=(last.round if last is not None else 0) + 1,
                    reason=reason,
                    added=[c.key for c, _, _ in new],
                    short=short,
                    target=target,
                    spent_hours=spent_hours,
                )
            )
            s.add_all(_run_row(study_id, c, n, frac) for c, n, frac in new)
            return len(new)

    # -- model costs --------------------------------------------------------------------------
    def model_costs(self, study_id: int) -> list[ModelCostRow]:
        """The costs measured for the study's models (one row per model)."""
        with self.session() as s:
            return list(
                s.scalars(select(ModelCostRow).where(ModelCostRow.study_id == study_id).order_by(ModelCostRow.id))
            )

    def save_model_costs(self, study_id: int, model: str, fields: dict[str, Any]) -> bool:
        """Store one model's costs at ``fields["input_size"]`` unless they are stored already (by
        this or another process); returns whether this call stored them."""
        with self.session() as s:
            if (
                s.scalar(
                    select(ModelCostRow.id).where(
                        ModelCostRow.study_id == study_id,
                        ModelCostRow.model == model,
                        ModelCostRow.input_size == fields["input_size"],
                    )
                )
                is not None
            ):
                return False
        return self._add_once(ModelCostRow(study_id=study_id, model=model, **fields))

    # -- layout choices -----------------------------------------------------------------------
    def layout_choice(self, study_id: int, key: str, measure: Callable[[], bool]) -> bool:
        """The study's channels-last choice for ``key``: the stored one, else ``measure()``'s,
        stored unless another worker stored its own first (then that one is used)."""

        def stored() -> bool | None:
            with self.session() as s:
                return s.scalar(
                    select(LayoutChoiceRow.channels_last).where(
                        LayoutChoiceRow.study_id == study_id, LayoutChoiceRow.key == key
                    )
                )

        choice = stored()
        if choice is not None:
            return bool(choice)
        measured = measure()
        return (
            measured
            if self._add_once(LayoutChoiceRow(study_id=study_id, key=key, channels_last=measured))
            else bool(stored())
        )

    # -- deployment (issue 17) ----------------------------------------------------------------
    def save_weights(self, run_id: int, data: bytes, best_only: bool = False, format: str = "safetensors") -> bool:
        """Keep a finished run's trained weights (replacing any kept before for it); returns
        whether they were kept. ``best_only``: keep one run per (arm, size), the best by
        validation accuracy and then the lowest seed, whichever order the runs finish in: the
        run's weights are kept only if they beat those kept, which are then dropped."""
        with self.session(write=True) as s:
            run = s.get(RunRow, run_id)
            if best_only:
                rivals = s.execute(
                    select(RunRow.id, RunRow.val_acc, RunRow.seed)
                    .join(RunWeightsRow, RunWeightsRow.run_id == RunRow.id)
                    .where(
                        RunRow.study_id == run.study_id,
                        RunRow.arm == run.arm,
                        RunRow.size_kind == run.size_kind,
                        RunRow.size_value == run.size_value,
                        RunRow.id != run_id,
                    )
                ).all()
                mine = (run.val_acc or 0.0, -run.seed)
                if any((acc or 0.0, -seed) >= mine for _, acc, seed in rivals):
                    return False
                for rival_id, _, _ in rivals:
                    s.delete(s.get(RunWeightsRow, rival_id))
            row = s.get(RunWeightsRow, run_id)
            if row is None:
                s.add(RunWeightsRow(run_id=run_id, format=format, data=data))
            else:
                row.format, row.data = format, data
            return True

    def weights(self, run_id: int) -> bytes | None:
        """A run's kept weights (safetensors bytes), or None."""
        if not inspect(self.engine).has_table(RunWeightsRow.__tablename__):
            return None
        with self.session() as s:
            return s.scalar(select(RunWeightsRow.data).where(RunWeightsRow.run_id == run_id))

    def runs_with_weights(self, study_id: int) -> set[int]:
        """Ids of the study's runs whose weights are kept."""
        if not inspect(self.engine).has_table(RunWeightsRow.__tablename__):
            return set()
        with self.session() as s:
            query = select(RunWeightsRow.run_id).join(RunRow, RunRow.id == RunWeightsRow.run_id)
            return set(s.scalars(query.where(RunRow.study_id == study_id)))

    def deployments(self, study_id: int) -> list[DeploymentRow]:
        """The study's measured variants; none in a database written before deployment existed."""
        if not inspect(self.engine).has_table(DeploymentRow.__tablename__):
            return []
        with self.session() as s:
            q = select(DeploymentRow).where(DeploymentRow.study_id == study_id)
            return list(s.scalars(q.order_by(DeploymentRow.run_id, DeploymentRow.id)))

    def save_deployment(self, study_id: int, run_id: int, runtime: str, precision: str, fields: dict[str, Any]) -> bool:
        """Store one variant of a run unless it is stored already; returns whether this call did."""
        row = DeploymentRow(study_id=study_id, run_id=run_id, runtime=runtime, precision=precision, **fields)
        return self._add_once(row)

    def _add_once(self, row: Base) -> bool:
        """Add ``row`` unless a unique constraint says another process added its twin first;
        returns whether this call added it."""
        try:
            with self.session() as s:
                s.add(row)
            return True
        except IntegrityError:
            return False


def _tuning_of(run: type[RunRow]):
    """The tuning job of a run's (arm, size), as a correlated subquery."""
    return select(TuningJobRow.id).where(
        TuningJobRow.study_id == run.study_id,
        TuningJobRow.arm == run.arm,
        TuningJobRow.size_kind == run.size_kind,
        TuningJobRow.size_value == run.size_value,
    )


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


def _run_row(study_id: int, cell: Cell, n_train: int, fraction: float) -> RunRow:
    """A pending run of ``cell`` on ``n_train`` images (``fraction`` of the pool)."""
    return RunRow(
        study_id=study_id,
        cell_key=cell.key,
        arm=cell.arm_name,
        model=cell.model,
        size_kind=cell.size_kind,
        size_value=cell.size_value,
        seed=cell.seed,
        n_train=n_train,
        fraction=fraction,
    )
