"""Opening a study database: per-database engine setup (SQLite's WAL and write lock,
PostgreSQL's pool), the locks shared by every worker of one database, retries of racing
writers, ``upgrade()`` of databases written by older versions, Optuna's storage on the same
database, and the one helper that reads a SQLite URL's file path.

No torch; Optuna is imported only by ``optuna_storage``.
"""

from __future__ import annotations

import functools
import hashlib
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, func, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from study.errors import UserError
from study.masking import mask_urls, masked_url
from study.store.schema import MAX_ATTEMPTS, RUN_ADDED_COLUMNS, STUDY_TABLE, Base

if TYPE_CHECKING:
    import optuna

SQLITE_PREFIX = "sqlite:///"


def sqlite_path(url: str) -> str | None:
    """The database file of a SQLite ``url`` (``sqlite:///<path>``), else None."""
    return url[len(SQLITE_PREFIX) :] if url.startswith(SQLITE_PREFIX) else None


def missing_sqlite_file(url: str) -> str | None:
    """The database file of a SQLite ``url`` where it does not exist, else None."""
    path = sqlite_path(url)
    return path if path is not None and not Path(path).is_file() else None


def make_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite gets what parallel writers on one machine need: WAL mode
    (readers never block the writer, and a killed process never leaves the file corrupt), a
    generous busy timeout (writers queue for the lock instead of failing), and transactions that
    begin as SQLite's ``BEGIN`` ourselves, so that a transaction that reads and then writes (a
    claim) can begin with ``BEGIN IMMEDIATE`` (see ``Store.session``)."""
    file = sqlite_path(url)
    if file is not None:
        path = Path(file)
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


def create_tables(engine: Engine) -> None:
    """Bring an old database up to date and create the tables it lacks (one process at a time)."""
    with schema_lock(engine):
        upgrade(engine)
        Base.metadata.create_all(engine)


def open_database(url: str, create: bool = True) -> Engine:
    """An engine on the study database at ``url``, brought up to date (``upgrade``), its tables
    created unless ``create`` is False (readers create nothing). A bad URL or an unreachable
    server is the user's to fix: a ``UserError`` naming the URL."""
    try:
        engine = make_engine(url)
        if create:
            retry_conflicts(lambda: create_tables(engine), errors=(IntegrityError, OperationalError, ProgrammingError))
        else:
            upgrade(engine)
    except Exception as exc:
        if isinstance(exc, UserError):
            raise
        reason = mask_urls(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise UserError(f"cannot open storage {masked_url(url)!r}: {reason}") from None
    return engine


def upgrade(engine: Engine) -> None:
    """The one place where databases written by older versions are brought up to date.

    Databases written before Optuna shared them called the study table "studies", the name
    Optuna's own table needs: rename it (keeping every row) before the tables are created.
    Databases written before arms get an ``arm`` column on runs and tuning jobs, filled with
    their model (what an arm named after its model is), keeping every row; those written before
    runs recorded how they stopped get the empty columns of ``RUN_ADDED_COLUMNS``. Databases
    written before per-seed splits get an empty ``y_true`` column on predictions (their runs
    share ``y_test``)."""
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    if "studies" in tables and STUDY_TABLE not in tables:
        if "fingerprint" in {c["name"] for c in inspector.get_columns("studies")}:  # ours, not Optuna's
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE studies RENAME TO {STUDY_TABLE}")
    for table in ("runs", "tuning_jobs"):
        if table in tables and "arm" not in {c["name"] for c in inspector.get_columns(table)}:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN arm VARCHAR(200)")
                conn.exec_driver_sql(f"UPDATE {table} SET arm = model WHERE arm IS NULL")
    # Databases written before runs recorded how they stopped and their control: empty columns.
    if "runs" in tables:
        have = {c["name"] for c in inspector.get_columns("runs")}
        for column, kind in RUN_ADDED_COLUMNS.items():
            if column not in have:
                with engine.begin() as conn:
                    conn.exec_driver_sql(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
    if "predictions" in tables and "y_true" not in {c["name"] for c in inspector.get_columns("predictions")}:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE predictions ADD COLUMN y_true {_blob(engine)}")


def _blob(engine: Engine) -> str:
    """The column type of binary data in this database's SQL."""
    return "BYTEA" if engine.dialect.name == "postgresql" else "BLOB"


@functools.lru_cache(maxsize=8)
def optuna_storage(
    url: str, heartbeat: float | None = None, grace_period: float | None = None
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on the study's database (one per process and URL). With
    ``heartbeat`` (seconds), each running trial records a heartbeat; one silent for
    ``grace_period`` is failed by the next worker that looks, and enqueued again
    (``RetryFailedTrialCallback``) with its parameters."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    attempts = 5
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings(), schema_lock(make_engine(url)):  # one creator of Optuna's tables at a time
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                beats: dict[str, Any] = {}
                if heartbeat:
                    beats = {
                        "heartbeat_interval": max(1, round(heartbeat)),  # Optuna counts whole seconds
                        "grace_period": max(2, round(grace_period or 2 * heartbeat)),
                        # Optuna 4.9 renamed RetryFailedTrialCallback / failed_trial_callback to these.
                        "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_ATTEMPTS - 1),
                    }
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beats)
        except OperationalError:
            # SQLite: processes opening a fresh database at once race to create Optuna's tables
            # ("table ... already exists"): the loser finds them created when it tries again.
            if attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
