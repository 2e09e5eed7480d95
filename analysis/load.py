"""Reading a study from the store into tidy DataFrames: the one way the analysis and the
reports read the database (through the store's schema, ``study.store.schema``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np
import pandas as pd
from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from study.errors import UserError
from study.masking import mask_urls, masked_url
from study.store.engine import open_database
from study.store.schema import (
    DONE,
    FAILED,
    EpochRow,
    ModelCostRow,
    PredictionRow,
    RunRow,
    SequentialRoundRow,
    StudyRow,
    control_name,
    is_control,
)

RUN_COLUMNS = [
    "run_id",
    "dataset",
    "arm",
    "model",
    "size_kind",
    "size_value",
    "subset_list",
    "fraction",
    "n_train",
    "seed",
    "status",
    "test_acc",
    "test_loss",
    "test_f1",
    "val_acc",
    "best_epoch",
    "epochs_run",
    "train_seconds",
    "images_per_second",
    "n_params",
    "peak_memory_mb",
    "device",
    "hparams_source",
    "hparams",
    "error",
    "attempts",
    "environment",
    "worker",
    "stop",
    "steps_run",
    "control_val_acc",
    "control_test_acc",
    "control_gained",
    "control_lost",
    "control_steps",
    "control_seconds",
]
# p50/p95 latency at batch 1 with one thread and with all threads: costs and deployments alike
LATENCY_COLUMNS = ["latency_p50_ms_1t", "latency_p95_ms_1t", "latency_p50_ms_all", "latency_p95_ms_all", "threads_all"]
COST_COLUMNS = ["model", "input_size", "n_params", "macs", "size_mb", *LATENCY_COLUMNS, "details"]
SEQUENTIAL_COLUMNS = ["round", "reason", "added", "short", "target", "spent_hours"]
RESULTS_CSV_COLUMNS = [
    "dataset",
    "arm",
    "model",
    "fraction",
    "n_train",
    "seed",
    "test_acc",
    "test_loss",
    "test_f1",
    "train_seconds",
    "images_per_second",
    "size_kind",
    "size_value",
    "subset_list",
    "val_acc",
    "best_epoch",
    "epochs_run",
    "n_params",
    "peak_memory_mb",
    "device",
    "hparams_source",
    "stop",
    "steps_run",
    "control_test_acc",
    "control_gained",
    "control_lost",
]


@dataclass
class StudyData:
    """One study as read from the store.

    runs: one row per planned run (every status), columns ``RUN_COLUMNS``.
    epochs: one row per epoch of a finished run: run_id, epoch, train_loss, train_acc,
        val_loss, val_acc, lr, seconds, images_seen.
    predictions: run_id -> predicted class per test image (int32), for finished runs.
    y_test: the true test labels, in the predictions' order (with per-seed splits: seed 0's).
    y_true: run_id -> the true labels of that run's own test split, for runs of a study with
        per-seed splits (``data.split_per_seed``); ``labels_of`` picks the right one.
    costs: one row per model whose costs were measured (``COST_COLUMNS``, from the
        ``model_costs`` table); no rows when none were.
    storage_url: where the study was read from (the tuning tables live in the same database).
    sequential: the decisions of a sequential study (``--until-ci``), one row per round
        (``SEQUENTIAL_COLUMNS``, from ``sequential_rounds``); no rows for a fixed grid.
    """

    name: str
    settings: dict
    config: dict
    dataset: dict
    splits: dict
    runs: pd.DataFrame
    epochs: pd.DataFrame
    y_test: np.ndarray
    predictions: dict[int, np.ndarray] = field(default_factory=dict)
    costs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COST_COLUMNS))
    storage_url: str = ""
    sequential: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SEQUENTIAL_COLUMNS))
    y_true: dict[int, np.ndarray] = field(default_factory=dict)

    def labels_of(self, run_id: int) -> np.ndarray:
        """The true labels of the test images run ``run_id`` predicted (its seed's own split, or
        the study's one test set)."""
        return self.y_true.get(run_id, self.y_test)

    @property
    def split_per_seed(self) -> bool:
        """Whether each seed drew its own test and validation split."""
        return bool((self.splits or {}).get("split_per_seed"))

    @property
    def done(self) -> pd.DataFrame:
        """The finished runs."""
        return self.runs[self.runs["status"] == DONE].reset_index(drop=True)

    @property
    def failed(self) -> pd.DataFrame:
        """The runs that raised (diverged, out of memory, ...), with their error."""
        return self.runs[self.runs["status"] == FAILED].reset_index(drop=True)

    @property
    def unfinished(self) -> pd.DataFrame:
        """Planned runs with no result yet (pending, or running when the store was read)."""
        return self.runs[~self.runs["status"].isin([DONE, FAILED])].reset_index(drop=True)

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.get("class_names", []))


def load_study(url: str, name: str | None = None) -> StudyData:
    """Read study ``name`` (or the only study) from the database at ``url``."""
    engine = open_database(url, create=False)
    names = [n for n in _names(engine, url) if not is_control(n)]  # a budget control belongs to its study
    if name is None:
        if len(names) != 1:
            raise UserError(
                f"the store {masked_url(url)} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                "name one with --name"
            )
        name = names[0]
    with Session(engine, expire_on_commit=False) as s, s.begin():
        study = s.scalar(select(StudyRow).where(StudyRow.name == name))
        if study is None:
            raise UserError(f"study {name!r} is not in {masked_url(url)}; studies there: {', '.join(names) or 'none'}")
        runs = list(s.scalars(select(RunRow).where(RunRow.study_id == study.id).order_by(RunRow.id)))
        run_ids = [r.id for r in runs if r.status == DONE]
        epochs = list(s.scalars(select(EpochRow).where(EpochRow.run_id.in_(run_ids)))) if run_ids else []
        preds = list(s.scalars(select(PredictionRow).where(PredictionRow.run_id.in_(run_ids)))) if run_ids else []
    costs = _cost_rows(engine, study.id)
    dataset_name = study.dataset.get("name", "")
    run_frame = pd.DataFrame(
        [
            {
                **{c: getattr(r, c, None) for c in RUN_COLUMNS if c not in ("run_id", "dataset", "subset_list")},
                "arm": r.arm or r.model,  # the way it trained (see config.Arm); the model's name by default
                "run_id": r.id,
                "dataset": dataset_name,
                "subset_list": _subset_list(study.config, r.size_kind, r.size_value),
            }
            for r in runs
        ],
        columns=RUN_COLUMNS,
    )
    epoch_cols = ["run_id", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_seen"]
    epoch_frame = pd.DataFrame([{c: getattr(e, c) for c in epoch_cols} for e in epochs], columns=epoch_cols)
    return StudyData(
        name=study.name,
        settings=study.settings,
        config=_masked_config(study.config),
        dataset=study.dataset,
        splits=study.splits,
        runs=run_frame,
        epochs=epoch_frame.sort_values(["run_id", "epoch"]).reset_index(drop=True),
        y_test=np.frombuffer(study.y_test, dtype=np.int32),
        predictions={p.run_id: np.frombuffer(p.y_pred, dtype=np.int32) for p in preds},
        y_true={p.run_id: np.frombuffer(p.y_true, dtype=np.int32) for p in preds if p.y_true is not None},
        costs=pd.DataFrame(costs, columns=COST_COLUMNS).sort_values("model").reset_index(drop=True),
        storage_url=url,
        sequential=pd.DataFrame(_sequential_rows(engine, study.id), columns=SEQUENTIAL_COLUMNS),
    )


def load_control(data: StudyData) -> StudyData | None:
    """The budget control of ``data``'s study (``study.budget_control``) when the store holds
    one with a finished run; None otherwise."""
    if not data.storage_url:
        return None
    if control_name(data.name) not in _names(open_database(data.storage_url, create=False), data.storage_url):
        return None
    control = load_study(data.storage_url, control_name(data.name))
    return control if len(control.done) else None


def _subset_list(config: dict | None, kind: str, value: float) -> str:
    """The file name of the subset list a run of kind 'list' trained on; '' for other runs."""
    lists = (config or {}).get("subset_lists") or []
    if kind != "list" or not 0 <= int(value) < len(lists):
        return ""
    return PurePath(lists[int(value)]).name  # as study.subsets.list_name names it


def _masked_config(config: dict) -> dict:
    """The stored config as shown (report, manifest): its storage URL without the password,
    also in databases written before the URL was masked on the way in."""
    if config.get("storage"):
        return {**config, "storage": masked_url(config["storage"])}
    return config


def _cost_rows(engine: Engine, study_id: int) -> list[dict]:
    """The study's ``model_costs`` rows; none from a database made before that table existed."""
    if ModelCostRow.__tablename__ not in inspect(engine).get_table_names():
        return []
    with Session(engine, expire_on_commit=False) as s, s.begin():
        rows = list(s.scalars(select(ModelCostRow).where(ModelCostRow.study_id == study_id)))
        return [{c: getattr(r, c) for c in COST_COLUMNS} for r in rows]


def _sequential_rows(engine: Engine, study_id: int) -> list[dict]:
    """The study's sequential decisions in order; none from a database made before them."""
    if SequentialRoundRow.__tablename__ not in inspect(engine).get_table_names():
        return []
    with Session(engine, expire_on_commit=False) as s, s.begin():
        query = select(SequentialRoundRow).where(SequentialRoundRow.study_id == study_id)
        rows = list(s.scalars(query.order_by(SequentialRoundRow.round)))
        return [{c: getattr(r, c) for c in SEQUENTIAL_COLUMNS} for r in rows]


def _names(engine: Engine, url: str) -> list[str]:
    try:
        with Session(engine) as s, s.begin():
            return list(s.scalars(select(StudyRow.name).order_by(StudyRow.id)))
    except Exception as exc:  # no tables: not a study database
        raise UserError(f"{masked_url(url)} is not a study database ({mask_urls(str(exc).splitlines()[0])})") from None


def results_table(data: StudyData) -> pd.DataFrame:
    """One row per finished run, the columns of ``results.csv``."""
    return data.done[RESULTS_CSV_COLUMNS].sort_values(["arm", "n_train", "seed"]).reset_index(drop=True)


def load_tuning(data: StudyData):
    """The study's tuning tables (``analysis.tuning.TuningTables``) when the study's database is
    known; None otherwise."""
    if not data.storage_url:
        return None
    from analysis.tuning import tuning_tables

    return tuning_tables(data.storage_url, data.name)
