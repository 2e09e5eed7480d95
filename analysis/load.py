"""Reading a study from the store into tidy DataFrames."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import select

from study.errors import UserError
from study.store import DONE, EpochRow, PredictionRow, RunRow, Store, StudyRow

RUN_COLUMNS = [
    "run_id", "dataset", "model", "size_kind", "size_value", "fraction", "n_train", "seed", "status",
    "test_acc", "test_loss", "test_f1", "val_acc", "best_epoch", "epochs_run", "train_seconds",
    "images_per_second", "n_params", "peak_memory_mb", "device", "hparams_source", "hparams", "error", "attempts",
]
RESULTS_CSV_COLUMNS = [
    "dataset", "model", "fraction", "n_train", "seed", "test_acc", "test_loss", "test_f1", "train_seconds",
    "images_per_second", "size_kind", "size_value", "val_acc", "best_epoch", "epochs_run", "n_params",
    "peak_memory_mb", "device", "hparams_source",
]


@dataclass
class StudyData:
    """One study as read from the store.

    runs: one row per planned run (every status), columns ``RUN_COLUMNS``.
    epochs: one row per round of a finished run: run_id, epoch, train_loss, train_acc,
        val_loss, val_acc, lr, seconds, images_seen.
    predictions: run_id -> predicted class per test image (int32), for finished runs.
    y_test: the true test labels, in the predictions' order.
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

    @property
    def done(self) -> pd.DataFrame:
        """The finished runs."""
        return self.runs[self.runs["status"] == DONE].reset_index(drop=True)

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.get("class_names", []))


def load_study(url: str, name: str | None = None) -> StudyData:
    """Read study ``name`` (or the only study) from the database at ``url``."""
    store = Store(url, create=False)
    names = _names(store)
    if name is None:
        if len(names) != 1:
            raise UserError(f"the store {url} holds {len(names)} studies ({', '.join(names) or 'none'}); name one with --name")
        name = names[0]
    with store.session() as s:
        study = s.scalar(select(StudyRow).where(StudyRow.name == name))
        if study is None:
            raise UserError(f"study {name!r} is not in {url}; studies there: {', '.join(names) or 'none'}")
        runs = list(s.scalars(select(RunRow).where(RunRow.study_id == study.id).order_by(RunRow.id)))
        run_ids = [r.id for r in runs if r.status == DONE]
        epochs = list(s.scalars(select(EpochRow).where(EpochRow.run_id.in_(run_ids)))) if run_ids else []
        preds = list(s.scalars(select(PredictionRow).where(PredictionRow.run_id.in_(run_ids)))) if run_ids else []
    dataset_name = study.dataset.get("name", "")
    run_frame = pd.DataFrame(
        [{**{c: getattr(r, c, None) for c in RUN_COLUMNS if c not in ("run_id", "dataset")}, "run_id": r.id, "dataset": dataset_name} for r in runs],
        columns=RUN_COLUMNS,
    )
    epoch_cols = ["run_id", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_seen"]
    epoch_frame = pd.DataFrame([{c: getattr(e, c) for c in epoch_cols} for e in epochs], columns=epoch_cols)
    return StudyData(
        name=study.name,
        settings=study.settings,
        config=study.config,
        dataset=study.dataset,
        splits=study.splits,
        runs=run_frame,
        epochs=epoch_frame.sort_values(["run_id", "epoch"]).reset_index(drop=True),
        y_test=np.frombuffer(study.y_test, dtype=np.int32),
        predictions={p.run_id: np.frombuffer(p.y_pred, dtype=np.int32) for p in preds},
    )


def _names(store: Store) -> list[str]:
    try:
        return store.study_names()
    except Exception as exc:  # no tables: not a study database
        raise UserError(f"{store.url} is not a study database ({str(exc).splitlines()[0]})") from None


def results_table(data: StudyData) -> pd.DataFrame:
    """One row per finished run, the columns of ``results.csv``."""
    return data.done[RESULTS_CSV_COLUMNS].sort_values(["model", "n_train", "seed"]).reset_index(drop=True)
