"""Claiming work from the store: runs and tuning jobs, each marked as one worker's in one
transaction, kept by heartbeats, handed back or taken over when its worker is gone, and recorded
only by its holder (the protocol is described in ``study/store/store.py``). A mixin of ``Store``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import exists, func, inspect, select, update

from study.masking import mask_urls
from study.store.engine import retry_conflicts
from study.store.schema import (
    DONE,
    FAILED,
    MAX_ATTEMPTS,
    PENDING,
    RUNNING,
    STATUSES,
    Cell,
    Claimable,
    EpochRow,
    PredictionRow,
    RunRow,
    TuningJobRow,
    WorkerRow,
    db_now,
)
from study.store.workers import dead_here


class RunClaims:
    """``Store``'s runs and tuning jobs: adding, claiming, heartbeats, finishing, failing."""

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
        # Longest first: the largest size, and seed 0 (which carries the budget control) before its
        # other seeds, so that the workers end together instead of one finishing a long run alone.
        order = (RunRow.size_value.desc(), RunRow.seed, RunRow.id)
        return self._claim_next(RunRow, query.order_by(*order), worker)

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


def _tuning_of(run: type[RunRow]):
    """The tuning job of a run's (arm, size), as a correlated subquery."""
    return select(TuningJobRow.id).where(
        TuningJobRow.study_id == run.study_id,
        TuningJobRow.arm == run.arm,
        TuningJobRow.size_kind == run.size_kind,
        TuningJobRow.size_value == run.size_value,
    )


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
