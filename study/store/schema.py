"""The store's schema: the contract between the study side, which writes, and the analysis
side, which reads (``analysis/load.py``, ``analysis/tuning.py``). Tables, run statuses, cells and
their keys, the names of tuning studies and the settings fingerprint live here and nowhere else;
renaming a column or a status breaks every database already written, so don't.

No torch, and nothing that opens a database (that is ``study.store.engine``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

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
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import FunctionElement

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
    arm: Mapped[str | None] = mapped_column(String(200), nullable=True)  # filled by engine.upgrade in older databases
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
    # How the run ended (STOPS) and its optimiser steps; then the convergence control, where the
    # run carried it (trained as many steps again: what it would have reported then).
    stop: Mapped[str | None] = mapped_column(String(16), nullable=True)
    steps_run: Mapped[int | None] = mapped_column(Integer, nullable=True)
    control_val_acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    control_test_acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    # test images the control's extra steps got right that the run got wrong, and the reverse
    control_gained: Mapped[int | None] = mapped_column(Integer, nullable=True)
    control_lost: Mapped[int | None] = mapped_column(Integer, nullable=True)
    control_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    control_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


# RunRow.stop: plateau (validation stopped improving), capped (reached max_steps: not converged),
# epochs (a fixed budget's epochs all trained), patience (a fixed budget stopped early).
PLATEAU, CAPPED = "plateau", "capped"
STOPS = (PLATEAU, CAPPED, "epochs", "patience")
# Columns added to ``runs`` after databases were first written (``engine.upgrade`` adds them).
RUN_ADDED_COLUMNS = {
    "stop": "VARCHAR(16)",
    "steps_run": "INTEGER",
    "control_val_acc": "FLOAT",
    "control_test_acc": "FLOAT",
    "control_gained": "INTEGER",
    "control_lost": "INTEGER",
    "control_steps": "INTEGER",
    "control_seconds": "FLOAT",
}


class EpochRow(Base):
    """Training and validation metrics of one epoch of one run."""

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
    """A run's predicted class for each test image (int32, in the order of ``studies.y_test``, or
    with ``data.split_per_seed`` of ``y_true``: the true labels of the run's own test split)."""

    __tablename__ = "predictions"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    y_pred: Mapped[bytes] = mapped_column(LargeBinary)
    y_true: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # None: the labels are y_test


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
    arm: Mapped[str | None] = mapped_column(String(200), nullable=True)  # filled by engine.upgrade in older databases
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


# -- deployment (issue 17): trained weights kept for export, and what each exported variant costs
class RunWeightsRow(Base):
    """The weights of a finished run's best round (a safetensors file's bytes), kept for the runs
    that will be exported (study/deploy.py): in the store, so any worker on any machine can keep
    them and the deploying process can read them."""

    __tablename__ = "run_weights"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    format: Mapped[str] = mapped_column(String(32), default="safetensors")
    data: Mapped[bytes] = mapped_column(LargeBinary)


class DeploymentRow(Base):
    """One variant of one run's trained model as it would ship: its runtime and precision, file
    size, CPU latency at batch 1 (milliseconds, p50/p95, one thread and ``threads_all``), test
    accuracy, and agreement with the PyTorch model on the test images. A variant that could not
    be made (export or quantization failed) has ``status`` 'failed' and the reason in ``error``."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("study_id", "run_id", "runtime", "precision"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(f"{STUDY_TABLE}.id"), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    runtime: Mapped[str] = mapped_column(String(32))  # 'pytorch' | 'onnxruntime'
    precision: Mapped[str] = mapped_column(String(32))  # 'fp32' | 'int8-dynamic' | 'int8-static'
    status: Mapped[str] = mapped_column(String(16))  # 'done' | 'failed'
    size_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_p50_ms_1t: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_p95_ms_1t: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_p50_ms_all: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_p95_ms_all: Mapped[float | None] = mapped_column(Float, nullable=True)
    threads_all: Mapped[int | None] = mapped_column(Integer, nullable=True)
    test_acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_logit_diff: Mapped[float | None] = mapped_column(Float, nullable=True)  # vs PyTorch fp32, test images
    class_agreement: Mapped[float | None] = mapped_column(Float, nullable=True)  # share of equal predicted classes
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # file, versions, repetitions, load average
    measured_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SequentialRoundRow(Base):
    """One decision of a sequential study (``--until-ci``, analysis/sequential.py), taken once
    under the store's lock when every planned run had finished: the runs it added (``added``:
    cell keys), or why the study stopped (``reason``), with the intervals still wider than the
    target (``short``) and the training hours spent. Its runs are inserted in the same transaction."""

    __tablename__ = "sequential_rounds"
    __table_args__ = (UniqueConstraint("study_id", "round"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey(f"{STUDY_TABLE}.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)  # 1, 2, ... in the order decided
    reason: Mapped[str] = mapped_column(String(32))  # 'more seeds' | 'target width met' | 'seed cap' | 'time budget'
    added: Mapped[list] = mapped_column(JSON)  # cell keys of the runs it added
    short: Mapped[list] = mapped_column(JSON)  # intervals wider than the target: kind, arm, other, n_train, width
    target: Mapped[dict] = mapped_column(JSON)  # the [sequential] settings it decided under
    spent_hours: Mapped[float] = mapped_column(Float)  # training time of the finished runs
    decided_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


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


BUDGET_CONTROL_FACTOR = 2  # a study's budget control trains this many times its budget
_CONTROL_SUFFIX = f"+budget-x{BUDGET_CONTROL_FACTOR}"


def control_name(study: str) -> str:
    """Name of the budget control of dataset study ``study`` (``study.budget_control``), in the
    same database. Convention shared by ``study run`` and the analysis."""
    return study + _CONTROL_SUFFIX


def is_control(study: str) -> bool:
    """Whether a dataset study in the store is some study's budget control."""
    return study.endswith(_CONTROL_SUFFIX)


def flips(before, after, labels) -> tuple[int, int]:
    """(gained, lost), what ``runs.control_gained`` and ``control_lost`` count: test images wrong
    in ``before``'s predictions and right in ``after``'s, and the reverse (numpy arrays). Shared by
    the in-run control (``study.train``) and the companion one (``analysis.study_analysis``)."""
    right_before, right_after = before == labels, after == labels
    return int((~right_before & right_after).sum()), int((right_before & ~right_after).sum())


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


LIST_SHA256 = "subset_list_sha256"  # settings key: {subset list name: sha256 of its file}, for the report
# Settings keys kept with a study but left out of its fingerprint: arms only add cells (each arm
# is checked on its own), and a list's file checksum records provenance (what a list selects is
# fingerprinted as ``subset_lists``).
UNFINGERPRINTED = ("arms", LIST_SHA256)


def settings_fingerprint(settings: dict) -> str:
    """The 32-hex digest of a study's settings: runs may join a study only with the same one."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
