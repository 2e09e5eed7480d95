"""The tuning of a study, read from Optuna's tables in the study's database: every trial, the
best trial of each tuned (model, size), and which parameters mattered. No torch.

Optuna studies belong to a study by their user attributes ``study, model, size_kind,
size_value`` (see ``study.store.tuning_study_name``); trials carry ``epochs_run``. States are
Optuna's names: COMPLETE, PRUNED, FAIL, RUNNING, WAITING.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState
from sqlalchemy import inspect

from study.store.engine import make_engine

TRIAL_COLUMNS = ["model", "size_kind", "size_value", "optuna_study", "trial", "state", "value", "epochs_run"]
BEST_COLUMNS = [
    "model",
    "size_kind",
    "size_value",
    "optuna_study",
    "best_trial",
    "best_value",
    "n_trials",
    "n_complete",
    "n_pruned",
    "n_failed",
]
IMPORTANCE_COLUMNS = ["model", "size_kind", "size_value", "param", "importance"]
MIN_TRIALS_FOR_IMPORTANCE = 3


@dataclass
class TuningTables:
    """trials: one row per trial (``TRIAL_COLUMNS`` and one ``param_<name>`` column per
    parameter; ``value`` is the best validation accuracy, or a pruned trial's last reported one).
    best: one row per tuned cell (``BEST_COLUMNS`` and the best trial's ``param_<name>``;
    best_trial and best_value are missing while no trial has completed).
    importances: ``IMPORTANCE_COLUMNS``, from optuna.importance where a cell has at least three
    complete trials whose parameters vary; empty otherwise."""

    trials: pd.DataFrame
    best: pd.DataFrame
    importances: pd.DataFrame


def tuning_tables(storage_url: str, study_name: str) -> TuningTables:
    """Read the tuning of study ``study_name`` from the database at ``storage_url``; frames with
    the documented columns and no rows when the study was not tuned."""
    studies = _tuning_studies(storage_url, study_name)
    trial_rows, best_rows, importance_rows = [], [], []
    for study in studies:
        cell = {key: study.user_attrs.get(key) for key in ("model", "size_kind", "size_value")}
        cell["model"] = study.user_attrs.get("arm", cell["model"])  # tuning is per arm: label by arm
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            trial_rows.append(
                {
                    **cell,
                    "optuna_study": study.study_name,
                    "trial": t.number,
                    "state": t.state.name,
                    "value": t.value if t.value is not None else _last_reported(t),
                    "epochs_run": t.user_attrs.get("epochs_run"),
                    **{f"param_{k}": v for k, v in t.params.items()},
                }
            )
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value) if complete else None  # Optuna's best_trial, without its exception
        best_rows.append(
            {
                **cell,
                "optuna_study": study.study_name,
                "best_trial": best.number if best else None,
                "best_value": best.value if best else np.nan,
                "n_trials": len(trials),
                "n_complete": len(complete),
                "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
                "n_failed": sum(t.state == TrialState.FAIL for t in trials),
                **({f"param_{k}": v for k, v in best.params.items()} if best else {}),
            }
        )
        for param, importance in _importances(study, complete).items():
            importance_rows.append({**cell, "param": param, "importance": importance})
    order = ["model", "size_kind", "size_value"]
    trials_df = _frame(trial_rows, TRIAL_COLUMNS, order + ["trial"])
    best_df = _frame(best_rows, BEST_COLUMNS, order)
    best_df["best_trial"] = best_df["best_trial"].astype("Int64")
    return TuningTables(trials=trials_df, best=best_df, importances=_frame(importance_rows, IMPORTANCE_COLUMNS, order))


def _tuning_studies(storage_url: str, study_name: str) -> list[optuna.Study]:
    # A database that never held a tuned study has no Optuna tables: read nothing, create nothing.
    engine = make_engine(storage_url)
    try:
        if not {"trials", "version_info"} <= set(inspect(engine).get_table_names()):
            return []
    finally:
        engine.dispose()
    storage = optuna.storages.RDBStorage(storage_url, skip_table_creation=True)
    try:
        return [
            optuna.load_study(study_name=summary.study_name, storage=storage)
            for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)
            if summary.user_attrs.get("study") == study_name
        ]
    finally:
        storage.engine.dispose()


def _last_reported(trial: optuna.trial.FrozenTrial) -> float:
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else np.nan


def _importances(study: optuna.Study, complete: list) -> dict[str, float]:
    """fANOVA importances (seeded) when enough complete trials vary in some parameter."""
    varying = {k for k in (complete[0].params if complete else {}) if len({t.params.get(k) for t in complete}) > 1}
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE or not varying:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.get_param_importances(study, evaluator=evaluator)


def _frame(rows: list[dict], columns: list[str], order: list[str]) -> pd.DataFrame:
    params = sorted({k for r in rows for k in r if k.startswith("param_")})
    frame = pd.DataFrame(rows, columns=columns + params)
    return frame.sort_values(order, kind="stable").reset_index(drop=True) if len(frame) else frame
