"""The study's one SQL database, the only thing ``study/`` and ``analysis/`` share (no torch).

- ``schema``: tables, statuses, cells and naming: the contract the analysis reads;
- ``engine``: opening a database (SQLite or PostgreSQL), locks, retries, ``upgrade()``, Optuna's storage;
- ``workers``: worker names, pid checks and heartbeats;
- ``store``: ``Store``, every read and write the study side makes.

The names below are re-exported so that ``from study.store import Store, RunRow`` keeps working.
"""

from study.store.engine import (
    NamedLock,
    create_tables,
    make_engine,
    missing_sqlite_file,
    open_database,
    optuna_storage,
    retry_conflicts,
    schema_lock,
    sqlite_path,
    upgrade,
)
from study.store.schema import (
    DONE,
    FAILED,
    LIST_SHA256,
    MAX_ATTEMPTS,
    PENDING,
    RUNNING,
    STATUSES,
    STUDY_TABLE,
    UNFINGERPRINTED,
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
    settings_fingerprint,
    tuning_study_name,
    utcnow,
)
from study.store.store import Store, study_to_join
from study.store.workers import Heartbeat, dead_here, worker_host, worker_id

__all__ = [
    "DONE",
    "FAILED",
    "MAX_ATTEMPTS",
    "PENDING",
    "RUNNING",
    "STATUSES",
    "STUDY_TABLE",
    "Base",
    "Cell",
    "Claimable",
    "DeploymentRow",
    "EpochRow",
    "Heartbeat",
    "LayoutChoiceRow",
    "ModelCostRow",
    "NamedLock",
    "PredictionRow",
    "RunRow",
    "RunWeightsRow",
    "SequentialRoundRow",
    "Store",
    "StudyRow",
    "TuningJobRow",
    "WorkerRow",
    "create_tables",
    "db_now",
    "dead_here",
    "make_engine",
    "missing_sqlite_file",
    "open_database",
    "optuna_storage",
    "retry_conflicts",
    "schema_lock",
    "settings_fingerprint",
    "UNFINGERPRINTED",
    "LIST_SHA256",
    "sqlite_path",
    "study_to_join",
    "tuning_study_name",
    "upgrade",
    "utcnow",
    "worker_host",
    "worker_id",
]
