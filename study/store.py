"""The study's one SQL database (SQLAlchemy): studies, runs, per-epoch metrics and test
predictions, tuning jobs, and Optuna's own tables beside them. It is the only thing that
``study/`` and ``analysis/`` share, so this module imports no torch.

Work is claimed from the store: a worker marks a pending run (or tuning job) as its own in one
conditional UPDATE, so parallel workers (processes or machines) never run the same cell twice.
A finished run is written in one transaction; a run whose worker died is claimed again. A run
whose (model, size) has a tuning job waits until that job is done.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    exists,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from study.errors import UserError

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATUSES = (PENDING, RUNNING, DONE, FAILED)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


# Optuna's RDB storage, which shares the database, owns the table name "studies".
STUDY_TABLE = "dataset_studies"


class StudyRow(Base):
    """One study: a name, and the settings that all its runs share."""

    __tablename__ = STUDY_TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict] = mapped_column(JSON)  # what the fingerprint covers, for messages
    config: Mapped[dict] = mapped_column(JSON)  # the full config of the latest invocation
    dataset: Mapped[dict] = mapped_column(JSON)  # name, classes, counts, skipped files, cache key
    splits: Mapped[dict] = mapped_column(JSON)  # sizes and leakage checks
    y_test: Mapped[bytes] = mapped_column(LargeBinary)  # int32 test labels, predictions' order
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RunRow(Base):
    """One cell (model, size, seed) of a study and, once done, its results."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("study_id", "cell_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(f"{STUDY_TABLE}.id"), index=True)
    cell_key: Mapped[str] = mapped_column(String(300))
    model: Mapped[str] = mapped_column(String(200))
    size_kind: Mapped[str] = mapped_column(String(16))  # 'fraction' | 'per_class'
    size_value: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)
    n_train: Mapped[int] = mapped_column(Integer)
    fraction: Mapped[float] = mapped_column(Float)  # n_train / training pool, for both kinds
    status: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    hparams: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    hparams_source: Mapped[str | None] = mapped_column(String(300), nullable=True)
    val_acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    test_acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    test_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    test_f1: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epochs_run: Mapped[int | None] = mapped_column(Integer, nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    images_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_params: Mapped[int | None] = mapped_column(Integer, nullable=True)
    peak_memory_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    environment: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class EpochRow(Base):
    """Training and validation metrics of one round of one run."""

    __tablename__ = "epochs"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float] = mapped_column(Float)
    train_acc: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float] = mapped_column(Float)
    val_acc: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    images_seen: Mapped[int] = mapped_column(Integer)


class PredictionRow(Base):
    """A run's predicted class for each test image (int32, in the order of ``studies.y_test``)."""

    __tablename__ = "predictions"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    y_pred: Mapped[bytes] = mapped_column(LargeBinary)


class ModelCostRow(Base):
    """What a model costs, measured once per (study, model) by the study side (it needs torch)
    and read by the analysis side. Latencies are CPU inference at batch 1, in milliseconds."""

    __tablename__ = "model_costs"
    __table_args__ = (UniqueConstraint("study_id", "model"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(f"{STUDY_TABLE}.id"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    input_size: Mapped[int] = mapped_column(Integer)
    n_params: Mapped[int] = mapped_column(Integer)
    macs: Mapped[float | None] = mapped_column(Float, nullable=True)  # multiply-accumulates per image
    size_mb: Mapped[float] = mapped_column(Float)
    latency_p50_ms_1t: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_p95_ms_1t: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_p50_ms_all: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_p95_ms_all: Mapped[float | None] = mapped_column(Float, nullable=True)
    threads_all: Mapped[int | None] = mapped_column(Integer, nullable=True)
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # device, repetitions, versions
    measured_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TuningJobRow(Base):
    """The tuning of one (model, size) of a study: its Optuna study, claimed like a run so that
    one worker at a time adds trials to it. The trials themselves live in Optuna's tables."""

    __tablename__ = "tuning_jobs"
    __table_args__ = (UniqueConstraint("study_id", "optuna_study"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(f"{STUDY_TABLE}.id"), index=True)
    optuna_study: Mapped[str] = mapped_column(String(500))  # tuning_study_name(...)
    model: Mapped[str] = mapped_column(String(200))
    size_kind: Mapped[str] = mapped_column(String(16))
    size_value: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


Claimable = type[RunRow] | type[TuningJobRow]  # the two kinds of work claimed from the store


def tuning_study_name(study: str, model: str, size_kind: str, size_value: float) -> str:
    """Name of the Optuna study that tunes one (dataset study, model, size), in the same database.

    Convention shared by the tuner (study/) and the analysis: the Optuna study carries user
    attributes ``study``, ``model``, ``size_kind``, ``size_value``; each trial carries
    ``epochs_run``; tuned runs record ``hparams_source = "tuned:<optuna study>#<trial number>"``.
    """
    size = f"{size_value:g}" if size_kind == "fraction" else str(int(size_value))
    return f"{study}|tune|{model}|{size_kind}={size}"


@dataclass(frozen=True)
class Cell:
    """One unit of work: a model trained on one subset size with one seed."""

    model: str
    size_kind: str
    size_value: float
    seed: int

    @property
    def key(self) -> str:
        size = f"{self.size_value:g}" if self.size_kind == "fraction" else str(int(self.size_value))
        return f"{self.model}|{self.size_kind}={size}|seed={self.seed}"


def worker_id() -> str:
    """host:pid, so a run held by a dead process on this host can be recognised and retaken."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode and a generous lock wait, so parallel
    workers on one machine queue for the write lock instead of failing."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            if path.parent and not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 120})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=120000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """Access to one study database."""

    def __init__(self, url: str, create: bool = True):
        self.url = url
        try:
            self.engine = make_engine(url)
            _rename_legacy_study_table(self.engine)
            if create:
                Base.metadata.create_all(self.engine)
        except Exception as exc:  # a bad URL or unreachable server is the user's to fix
            if isinstance(exc, UserError):
                raise
            raise UserError(f"cannot open storage {url!r}: {str(exc).splitlines()[0]}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is committed as one transaction, or rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    # -- studies ------------------------------------------------------------------------------
    def open_study(self, name: str, fingerprint: str, settings: dict, config: dict, dataset: dict, splits: dict, y_test: np.ndarray) -> int:
        """Create study ``name`` or reopen it; refuse settings that would mix incompatible results."""
        with self.session() as s:
            row = s.scalar(select(StudyRow).where(StudyRow.name == name))
            if row is None:
                row = StudyRow(name=name, fingerprint=fingerprint, settings=settings, config=config, dataset=dataset, splits=splits, y_test=np.asarray(y_test, np.int32).tobytes())
                s.add(row)
                s.flush()
                return row.id
            if row.fingerprint != fingerprint:
                key, old, new = _first_difference(row.settings, settings)
                raise UserError(
                    f"study {name!r} in {self.url} was run with {key}={old!r}, this config has {key}={new!r}; "
                    "use the same settings to resume, or --name NEW for a separate study"
                )
            row.config = config
            return row.id

    def study(self, name: str) -> StudyRow | None:
        with self.session() as s:
            return s.scalar(select(StudyRow).where(StudyRow.name == name))

    def study_names(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(StudyRow.name).order_by(StudyRow.id)))

    # -- runs ---------------------------------------------------------------------------------
    def add_cells(self, study_id: int, cells: list[tuple[Cell, int, float]]) -> int:
        """Add (cell, n_train, fraction) rows that are not in the store yet; returns how many."""
        with self.session() as s:
            existing = set(s.scalars(select(RunRow.cell_key).where(RunRow.study_id == study_id)))
            new = [
                RunRow(study_id=study_id, cell_key=c.key, model=c.model, size_kind=c.size_kind, size_value=c.size_value, seed=c.seed, n_train=n, fraction=frac)
                for c, n, frac in cells
                if c.key not in existing
            ]
            s.add_all(new)
            return len(new)

    def release_stale(self, study_id: int, grace_seconds: float) -> int:
        """Return to pending the runs and tuning jobs whose worker is gone: a dead process on
        this host, or no heartbeat for ``grace_seconds``. Returns how many were released."""
        host = socket.gethostname()
        cutoff = utcnow() - timedelta(seconds=grace_seconds)
        released = 0
        with self.session() as s:
            for table in (RunRow, TuningJobRow):
                for row in s.scalars(select(table).where(table.study_id == study_id, table.status == RUNNING)):
                    w_host, _, w_pid = (row.worker or "").rpartition(":")
                    dead_here = w_host == host and w_pid.isdigit() and not _pid_alive(int(w_pid))
                    silent = row.heartbeat_at is None or row.heartbeat_at < cutoff
                    if dead_here or silent:
                        # Conditional on the row being unchanged since read: never steal a fresh claim.
                        res = s.execute(
                            update(table)
                            .where(table.id == row.id, table.status == RUNNING, table.worker == row.worker)
                            .values(status=PENDING, worker=None)
                        )
                        released += res.rowcount
        return released

    def claim(self, study_id: int, worker: str, models: list[str] | None = None) -> RunRow | None:
        """Atomically take the next pending run of the study, or None when none is left.

        A run whose (model, size) has a tuning job that is not done yet is not claimable: its
        hyper-parameters are not known."""
        query = select(RunRow.id).where(RunRow.study_id == study_id, RunRow.status == PENDING, ~exists(_tuning_of(RunRow).where(TuningJobRow.status != DONE)))
        if models is not None:
            query = query.where(RunRow.model.in_(models))
        return self._claim_next(RunRow, query.order_by(RunRow.size_value, RunRow.seed, RunRow.id), worker)

    def claim_tuning(self, study_id: int, worker: str) -> TuningJobRow | None:
        """Atomically take the next pending tuning job of the study, or None."""
        query = select(TuningJobRow.id).where(TuningJobRow.study_id == study_id, TuningJobRow.status == PENDING)
        return self._claim_next(TuningJobRow, query.order_by(TuningJobRow.size_value, TuningJobRow.id), worker)

    def _claim_next(self, table: Claimable, candidates, worker: str):
        for _ in range(100):
            with self.session() as s:
                row_id = s.scalar(candidates.limit(1))
                if row_id is None:
                    return None
                now = utcnow()
                res = s.execute(
                    update(table)
                    .where(table.id == row_id, table.status == PENDING)
                    .values(status=RUNNING, worker=worker, claimed_at=now, heartbeat_at=now, attempts=table.attempts + 1, error=None)
                )
                if res.rowcount == 1:
                    return s.get(table, row_id)
            # another worker took it between our read and our update: try the next one
        return None

    def heartbeat(self, run_id: int, worker: str, table: Claimable = RunRow) -> bool:
        """Refresh a claim; False if the run (or tuning job) is no longer this worker's (taken over)."""
        with self.session() as s:
            res = s.execute(update(table).where(table.id == run_id, table.worker == worker, table.status == RUNNING).values(heartbeat_at=utcnow()))
            return res.rowcount == 1

    def finish(self, run_id: int, worker: str, fields: dict[str, Any], epochs: list[dict], y_pred: np.ndarray) -> bool:
        """Record a finished run, its epochs and predictions in one transaction.

        Only the worker holding the claim may finish it, so a run retaken from a presumed-dead
        worker is never recorded twice. Returns whether it was recorded.
        """
        with self.session() as s:
            res = s.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.worker == worker, RunRow.status == RUNNING)
                .values(status=DONE, finished_at=utcnow(), error=None, **fields)
            )
            if res.rowcount != 1:
                return False
            s.add_all(EpochRow(run_id=run_id, **e) for e in epochs)
            s.add(PredictionRow(run_id=run_id, y_pred=np.asarray(y_pred, np.int32).tobytes()))
            return True

    def finish_tuning(self, job_id: int, worker: str) -> bool:
        """Mark a tuning job done (its trials are in Optuna's tables): its cell's runs may start."""
        with self.session() as s:
            res = s.execute(
                update(TuningJobRow)
                .where(TuningJobRow.id == job_id, TuningJobRow.worker == worker, TuningJobRow.status == RUNNING)
                .values(status=DONE, finished_at=utcnow(), error=None)
            )
            return res.rowcount == 1

    def fail(self, run_id: int, worker: str, error: str, table: Claimable = RunRow) -> None:
        """Record a run (or tuning job) that raised; the study goes on and ``--retry-failed``
        runs it again."""
        with self.session() as s:
            s.execute(
                update(table)
                .where(table.id == run_id, table.worker == worker, table.status == RUNNING)
                .values(status=FAILED, finished_at=utcnow(), error=error[:4000])
            )

    def retry_failed(self, study_id: int) -> int:
        """Return failed runs and failed tuning jobs to pending; returns how many."""
        with self.session() as s:
            return sum(
                s.execute(update(table).where(table.study_id == study_id, table.status == FAILED).values(status=PENDING, worker=None)).rowcount
                for table in (RunRow, TuningJobRow)
            )

    # -- tuning jobs --------------------------------------------------------------------------
    def add_tuning_jobs(self, study_id: int, jobs: list[tuple[str, str, str, float]]) -> int:
        """Add (optuna study name, model, size kind, size value) jobs not in the store yet."""
        with self.session() as s:
            existing = set(s.scalars(select(TuningJobRow.optuna_study).where(TuningJobRow.study_id == study_id)))
            new = [
                TuningJobRow(study_id=study_id, optuna_study=name, model=model, size_kind=kind, size_value=value)
                for name, model, kind, value in jobs
                if name not in existing
            ]
            s.add_all(new)
            return len(new)

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
            rows = s.execute(select(TuningJobRow.status, func.count()).where(TuningJobRow.study_id == study_id).group_by(TuningJobRow.status)).all()
        return {**{k: 0 for k in STATUSES}, **dict(rows)}

    def waiting_on_tuning(self, study_id: int) -> bool:
        """Whether some pending run waits for a tuning job that is pending or running (not failed)."""
        open_jobs = _tuning_of(RunRow).where(TuningJobRow.status.in_((PENDING, RUNNING)))
        with self.session() as s:
            return s.scalar(select(RunRow.id).where(RunRow.study_id == study_id, RunRow.status == PENDING, exists(open_jobs)).limit(1)) is not None

    def counts(self, study_id: int) -> dict[str, int]:
        """Number of runs in each status."""
        with self.session() as s:
            rows = s.execute(select(RunRow.status, func.count()).where(RunRow.study_id == study_id).group_by(RunRow.status)).all()
        out = {k: 0 for k in STATUSES}
        out.update({status: n for status, n in rows})
        return out

    def runs(self, study_id: int, status: str | None = None) -> list[RunRow]:
        with self.session() as s:
            q = select(RunRow).where(RunRow.study_id == study_id)
            if status:
                q = q.where(RunRow.status == status)
            return list(s.scalars(q.order_by(RunRow.id)))

    # -- model costs --------------------------------------------------------------------------
    def model_costs(self, study_id: int) -> list[ModelCostRow]:
        """The costs measured for the study's models (one row per model)."""
        with self.session() as s:
            return list(s.scalars(select(ModelCostRow).where(ModelCostRow.study_id == study_id).order_by(ModelCostRow.id)))

    def save_model_costs(self, study_id: int, model: str, fields: dict[str, Any]) -> bool:
        """Store one model's costs unless they are stored already (by this or another process);
        returns whether this call stored them."""
        try:
            with self.session() as s:
                if s.scalar(select(ModelCostRow.id).where(ModelCostRow.study_id == study_id, ModelCostRow.model == model)) is not None:
                    return False
                s.add(ModelCostRow(study_id=study_id, model=model, **fields))
            return True
        except IntegrityError:  # another process stored the same model in between
            return False


def _tuning_of(run: type[RunRow]):
    """The tuning job of a run's (model, size), as a correlated subquery."""
    return select(TuningJobRow.id).where(
        TuningJobRow.study_id == run.study_id,
        TuningJobRow.model == run.model,
        TuningJobRow.size_kind == run.size_kind,
        TuningJobRow.size_value == run.size_value,
    )


def _rename_legacy_study_table(engine: Engine) -> None:
    """Databases written before Optuna shared them called the study table "studies", the name
    Optuna's own table needs: rename it (keeping every row) before the tables are created."""
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    if "studies" in tables and STUDY_TABLE not in tables:
        if "fingerprint" in {c["name"] for c in inspector.get_columns("studies")}:  # ours, not Optuna's
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE studies RENAME TO {STUDY_TABLE}")


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


def settings_fingerprint(settings: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
