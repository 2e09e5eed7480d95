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

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
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
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql.expression import FunctionElement

from study.errors import UserError

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATUSES = (PENDING, RUNNING, DONE, FAILED)
MAX_ATTEMPTS = 3  # a run whose worker died this many times is failed, not handed to the next worker


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class db_now(FunctionElement):
    """The database server's current UTC time, as a naive timestamp. Heartbeats are written and
    judged with this one clock, so workers on machines whose clocks disagree never take each
    other's runs for dead (the pattern of SQLAlchemy's "UTC timestamp function" recipe)."""

    type = DateTime()
    inherit_cache = True


@compiles(db_now)
def _db_now_default(element, compiler, **kw):  # noqa: ANN001
    return "CURRENT_TIMESTAMP"


@compiles(db_now, "postgresql")
def _db_now_postgresql(element, compiler, **kw):  # noqa: ANN001
    return "TIMEZONE('utc', CLOCK_TIMESTAMP())"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element, compiler, **kw):  # noqa: ANN001
    # Microseconds, as SQLAlchemy writes datetimes into SQLite, so stored values compare as text.
    return "STRFTIME('%Y-%m-%d %H:%M:%f000', 'now')"


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


class Claimed:
    """Columns of work that workers claim from the store (runs and tuning jobs): who holds it,
    since when, when it last showed signs of life, and how it ended."""

    status: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class RunRow(Claimed, Base):
    """One cell (arm, size, seed) of a study and, once done, its results. ``arm`` names the way
    it trains (see ``config.Arm``), ``model`` the timm model it trains."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("study_id", "cell_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(f"{STUDY_TABLE}.id"), index=True)
    cell_key: Mapped[str] = mapped_column(String(300))
    arm: Mapped[str | None] = mapped_column(String(200), nullable=True)  # filled by upgrade_schema in older databases
    model: Mapped[str] = mapped_column(String(200))
    size_kind: Mapped[str] = mapped_column(String(16))  # 'fraction' | 'per_class'
    size_value: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)
    n_train: Mapped[int] = mapped_column(Integer)
    fraction: Mapped[float] = mapped_column(Float)  # n_train / training pool, for both kinds
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
    """What a model costs, measured once per (study, model, input size) by the study side (it
    needs torch) and read by the analysis side. Latencies are CPU inference at batch 1, in
    milliseconds. (Databases made before arms keep one row per model.)"""

    __tablename__ = "model_costs"
    __table_args__ = (UniqueConstraint("study_id", "model", "input_size"),)
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


class LayoutChoiceRow(Base):
    """The memory layout a study trains one model in on one kind of device ('auto' decides it by
    measurement): decided once, by the first worker that needs it, and used by every worker, so
    that a run's result does not depend on which worker trained it."""

    __tablename__ = "layout_choices"
    __table_args__ = (UniqueConstraint("study_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(f"{STUDY_TABLE}.id"), index=True)
    key: Mapped[str] = mapped_column(String(300))  # model, input size, batch, device kind
    channels_last: Mapped[bool] = mapped_column(Boolean)
    decided_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TuningJobRow(Claimed, Base):
    """The tuning of one (arm, size) of a study: its Optuna study, claimed like a run so that
    one worker at a time adds trials to it. The trials themselves live in Optuna's tables."""

    __tablename__ = "tuning_jobs"
    __table_args__ = (UniqueConstraint("study_id", "optuna_study"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(f"{STUDY_TABLE}.id"), index=True)
    optuna_study: Mapped[str] = mapped_column(String(500))  # tuning_study_name(...)
    arm: Mapped[str | None] = mapped_column(String(200), nullable=True)  # filled by upgrade_schema in older databases
    model: Mapped[str] = mapped_column(String(200))
    size_kind: Mapped[str] = mapped_column(String(16))
    size_value: Mapped[float] = mapped_column(Float)


class WorkerRow(Base):
    """One worker process of a study (``host:pid``, with ``:t<thread>`` for a thread of a dask
    worker): what it is doing and when it was last heard from, for ``study status``."""

    __tablename__ = "workers"
    __table_args__ = (UniqueConstraint("study_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(f"{STUDY_TABLE}.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    doing: Mapped[str] = mapped_column(String(500), default="starting")
    runs_done: Mapped[int] = mapped_column(Integer, default=0)
    trials_done: Mapped[int] = mapped_column(Integer, default=0)


Claimable = type[RunRow] | type[TuningJobRow]  # the two kinds of work claimed from the store


def tuning_study_name(study: str, arm: str, size_kind: str, size_value: float) -> str:
    """Name of the Optuna study that tunes one (dataset study, arm, size), in the same database
    (an arm named after its model, as every arm of a study without ``[[arms]]``, gives the name
    of the model).

    Convention shared by the tuner (study/) and the analysis: the Optuna study carries user
    attributes ``study``, ``model``, ``size_kind``, ``size_value``; each trial carries
    ``epochs_run``; tuned runs record ``hparams_source = "tuned:<optuna study>#<trial number>"``.
    """
    size = f"{size_value:g}" if size_kind == "fraction" else str(int(size_value))
    return f"{study}|tune|{arm}|{size_kind}={size}"


@dataclass(frozen=True)
class Cell:
    """One unit of work: an arm (a model and how it trains) on one subset size with one seed.
    ``arm`` defaults to the model's name, the arm of a study that lists models only."""

    model: str
    size_kind: str
    size_value: float
    seed: int
    arm: str = ""

    @property
    def arm_name(self) -> str:
        return self.arm or self.model

    @property
    def key(self) -> str:
        size = f"{self.size_value:g}" if self.size_kind == "fraction" else str(int(self.size_value))
        return f"{self.arm_name}|{self.size_kind}={size}|seed={self.seed}"


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


def _dead_here(worker: str | None) -> bool:
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


def make_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite gets what parallel writers on one machine need: WAL mode
    (readers never block the writer, and a killed process never leaves the file corrupt), a
    generous busy timeout (writers queue for the lock instead of failing), and transactions that
    begin as SQLite's ``BEGIN`` ourselves, so that a transaction that reads and then writes (a
    claim) can begin with ``BEGIN IMMEDIATE`` (see ``Store.session``)."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            if path.parent and not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 120})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # pysqlite begins nothing itself: the "begin" hook does
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=120000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # noqa: ANN001
            # A deferred transaction that read before writing cannot wait for the write lock
            # (SQLITE_BUSY at once, whatever the timeout); IMMEDIATE takes it first, waiting.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "BEGIN")

        return engine
    # READ COMMITTED (PostgreSQL's default) suffices: claims lock the row they take.
    return create_engine(url, pool_pre_ping=True)


_SCHEMA_LOCK = 0x5374756479  # any fixed number: the advisory lock serialising schema changes


@contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Let one process at a time create tables (ours or Optuna's): processes that start together
    on a fresh PostgreSQL database would otherwise race to create the same table. A session
    advisory lock, released by the server if the process dies. Elsewhere a no-op (SQLite's
    racers are retried by the caller)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(select(func.pg_advisory_lock(_SCHEMA_LOCK)))
        conn.commit()
        try:
            yield
        finally:
            conn.execute(select(func.pg_advisory_unlock(_SCHEMA_LOCK)))
            conn.commit()


class NamedLock:
    """A lock shared by every worker of one database, by name: a PostgreSQL advisory lock, or on
    SQLite (whose workers share one machine) an exclusive ``flock`` on a file beside the
    database; on other databases no lock. The server or the kernel releases it when its process
    dies. ``release()`` may be called early, inside the ``with`` block."""

    def __init__(self, engine: Engine, name: str):
        self._engine, self._name = engine, name
        self._conn = self._file = None

    def __enter__(self) -> NamedLock:
        if self._engine.dialect.name == "postgresql":
            key = int.from_bytes(hashlib.sha256(self._name.encode()).digest()[:8], "big", signed=True)
            self._key, self._conn = key, self._engine.connect()
            self._conn.execute(select(func.pg_advisory_lock(key)))
            self._conn.commit()
        elif self._engine.dialect.name == "sqlite" and self._engine.url.database not in (None, "", ":memory:"):
            import fcntl

            digest = hashlib.sha256(self._name.encode()).hexdigest()[:16]
            self._file = open(f"{self._engine.url.database}.lock-{digest}", "a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def release(self) -> None:
        if self._conn is not None:
            self._conn.execute(select(func.pg_advisory_unlock(self._key)))
            self._conn.commit()
            self._conn.close()
            self._conn = None
        if self._file is not None:
            self._file.close()  # closing the file releases the flock
            self._file = None

    def __exit__(self, *exc) -> None:
        self.release()


def retry_conflicts(action, attempts: int = 8, errors: tuple = (IntegrityError,)):
    """Run ``action()``, again after a conflict with another process doing the same at the same
    moment (two workers adding the same study or cells: the loser finds them added)."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except errors:
            if attempt == attempts:
                raise
            time.sleep(0.05 * attempt)


def _create_tables(engine: Engine) -> None:
    with schema_lock(engine):
        _rename_legacy_study_table(engine)
        Base.metadata.create_all(engine)
        upgrade_schema(engine)


def upgrade_schema(engine: Engine) -> None:
    """Bring a database written before arms up to date: runs and tuning jobs get an ``arm``
    column, filled with their model (what an arm named after its model is), keeping every row."""
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    for table in (RunRow.__tablename__, TuningJobRow.__tablename__):
        if table in tables and "arm" not in {c["name"] for c in inspector.get_columns(table)}:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN arm VARCHAR(200)")
                conn.exec_driver_sql(f"UPDATE {table} SET arm = model WHERE arm IS NULL")


class Store:
    """Access to one study database."""

    def __init__(self, url: str, create: bool = True):
        self.url = url
        try:
            self.engine = make_engine(url)
            if create:
                retry_conflicts(
                    lambda: _create_tables(self.engine), errors=(IntegrityError, OperationalError, ProgrammingError)
                )
            else:
                _rename_legacy_study_table(self.engine)
                upgrade_schema(self.engine)
        except Exception as exc:  # a bad URL or unreachable server is the user's to fix
            if isinstance(exc, UserError):
                raise
            raise UserError(f"cannot open storage {url!r}: {str(exc).splitlines()[0]}") from None
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
                f"no study {name!r} in {self.url} (studies there: {names}); start it with `python -m study run`, or "
                "pass --name"
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
                f"study {row.name!r} in {self.url} was run with {key}={old!r}, this config has {key}={new!r}; "
                "use the same settings to resume, or --name NEW for a separate study"
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
                new = [
                    RunRow(
                        study_id=study_id,
                        cell_key=c.key,
                        arm=c.arm_name,
                        model=c.model,
                        size_kind=c.size_kind,
                        size_value=c.size_value,
                        seed=c.seed,
                        n_train=n,
                        fraction=frac,
                    )
                    for c, n, frac in cells
                    if c.key not in existing
                ]
                s.add_all(new)
                return len(new)

        return retry_conflicts(add)

    def release_stale(self, study_id: int, grace_seconds: float) -> int:
        """Return to pending the runs whose worker is gone: a dead process on this host, or no
        heartbeat for ``grace_seconds`` by the database's clock. A run whose worker died
        ``MAX_ATTEMPTS`` times (killed for memory each time, say) is failed instead, so one run
        cannot take every worker down in turn. Tuning jobs without any heartbeat for the grace
        period go back to pending too (their trials are judged by Optuna's own heartbeats).
        Returns how many runs and jobs were released or failed."""
        released = 0
        with self.session(write=True) as s:
            cutoff = s.scalar(select(db_now())) - timedelta(seconds=grace_seconds)
            for table in (RunRow, TuningJobRow):
                # In id order, so that workers releasing at once lock rows in one order (no deadlock).
                for row in s.scalars(
                    select(table).where(table.study_id == study_id, table.status == RUNNING).order_by(table.id)
                ):
                    silent = row.heartbeat_at is None or row.heartbeat_at < cutoff
                    if not (silent or (table is RunRow and _dead_here(row.worker))):
                        continue
                    values: dict[str, Any] = {"status": PENDING, "worker": None}
                    if table is RunRow and row.attempts >= MAX_ATTEMPTS:
                        values = {
                            "status": FAILED,
                            "finished_at": db_now(),
                            "error": f"its worker stopped {row.attempts} times before finishing it "
                            f"(last {row.worker}: killed, out of memory, "
                            "or the machine went down); run with --retry-failed to try again",
                        }
                    # Conditional on the row being unchanged since read: never steal a fresh claim.
                    res = s.execute(
                        update(table)
                        .where(table.id == row.id, table.status == RUNNING, table.worker == row.worker)
                        .values(**values)
                    )
                    released += res.rowcount
        return released

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
        run = self._claim_next(RunRow, query.order_by(RunRow.size_value, RunRow.seed, RunRow.id), worker)
        if run is not None:
            self.worker_doing(study_id, worker, f"run {run.cell_key}")
        return run

    def _claim_next(self, table: Claimable, candidates, worker: str):
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
                    return s.get(table, row_id)

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

    def finish(self, run_id: int, worker: str, fields: dict[str, Any], epochs: list[dict], y_pred: np.ndarray) -> bool:
        """Record a finished run, its epochs and predictions in one transaction.

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
            s.add(PredictionRow(run_id=run_id, y_pred=np.asarray(y_pred, np.int32).tobytes()))
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
                .values(status=FAILED, finished_at=db_now(), error=error[:4000])
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
                .values(status=status, finished_at=db_now(), error=error[:4000] if error else None)
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
                .values(doing=doing[:500], heartbeat_at=db_now(), trials_done=WorkerRow.trials_done + trials_done)
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
