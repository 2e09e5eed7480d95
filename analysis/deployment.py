"""Each trained model as it would ship (the ``deployments`` table, written by study/deploy.py):
runtime, precision, file size, CPU latency at batch 1, test accuracy and its drop from fp32;
which variants are Pareto-optimal in accuracy against latency; and which model is the most
accurate within a latency and size budget at each training-set size. No torch.

Variants are labelled by arm (the model's name for a study of plain models), in ``model`` as in
the rest of the analysis and in ``arm`` in deployment.csv.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from analysis.load import LATENCY_COLUMNS
from study.errors import UserError
from study.store.engine import open_database
from study.store.schema import DeploymentRow, RunRow, RunWeightsRow, StudyRow

INSTALL_HINT = "pip install onnx onnxruntime onnxscript"  # dependencies of `pip install -e .`
DEPLOYMENT_COLUMNS = [
    "run_id",
    "model",
    "size_kind",
    "size_value",
    "fraction",
    "n_train",
    "seed",
    "run_val_acc",
    "runtime",
    "precision",
    "status",
    "size_mb",
    *LATENCY_COLUMNS,
    "test_acc",
    "drop_from_fp32",
    "max_logit_diff",
    "class_agreement",
    "load_average_1m",
    "error",
]
CSV_COLUMNS = [
    "arm",
    "dataset",
    "n_train",
    "runtime",
    "precision",
    "size_mb",
    "latency_p50_ms",
    "latency_p95_ms",
    "threads",
    "test_acc",
]
CHOICE_COLUMNS = [
    "n_train",
    "fraction",
    "model",
    "runtime",
    "precision",
    "test_acc",
    "latency_p50_ms_1t",
    "size_mb",
    "n_fitting",
    "n_variants",
]
VARIANT_ORDER = {("pytorch", "fp32"): 0, ("onnxruntime", "fp32"): 1}  # then int8 variants by name


def load_deployments(url: str, study: str) -> pd.DataFrame:
    """One row per measured variant of the study (DEPLOYMENT_COLUMNS), failed ones included
    (status 'failed', the reason in ``error``). ``drop_from_fp32`` is the PyTorch fp32 test
    accuracy of the same run minus the variant's (positive: the variant is worse). Empty for a
    study without deployments (or a database written before the table existed)."""
    engine = open_database(url, create=False)
    if not inspect(engine).has_table(DeploymentRow.__tablename__):
        return pd.DataFrame(columns=DEPLOYMENT_COLUMNS)
    with Session(engine, expire_on_commit=False) as s:
        study_id = _study_id(s, url, study)
        rows = s.execute(
            select(DeploymentRow, RunRow)
            .join(RunRow, RunRow.id == DeploymentRow.run_id)
            .where(DeploymentRow.study_id == study_id)
        ).all()
    records = []
    for d, r in rows:
        records.append(
            {
                "run_id": r.id,
                "model": r.arm or r.model,  # labelled by arm, as the rest of the report
                "size_kind": r.size_kind,
                "size_value": r.size_value,
                "fraction": r.fraction,
                "n_train": r.n_train,
                "seed": r.seed,
                "run_val_acc": r.val_acc,
                **{c: getattr(d, c) for c in DEPLOYMENT_COLUMNS if hasattr(DeploymentRow, c) and c != "run_id"},
                "load_average_1m": (d.details or {}).get("load_average_1m"),
            }
        )
    frame = pd.DataFrame(records, columns=DEPLOYMENT_COLUMNS)
    return _with_drop(_sorted(frame))


def weights_kept(url: str, study: str) -> bool:
    """Whether some run of the study kept its trained weights for export (``run_weights``)."""
    engine = open_database(url, create=False)
    if not inspect(engine).has_table(RunWeightsRow.__tablename__):
        return False
    with Session(engine) as s:
        query = select(RunWeightsRow.run_id).join(RunRow, RunRow.id == RunWeightsRow.run_id)
        return s.scalar(query.where(RunRow.study_id == _study_id(s, url, study)).limit(1)) is not None


def _study_id(session: Session, url: str, study: str) -> int:
    found = session.scalar(select(StudyRow.id).where(StudyRow.name == study))
    if found is None:
        raise UserError(f"study {study!r} is not in {url}")
    return found


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    order = frame.apply(lambda r: (VARIANT_ORDER.get((r["runtime"], r["precision"]), 2), r["precision"]), axis=1)
    frame = frame.assign(_order=order.map(lambda o: o[0]) if len(frame) else [])
    frame = frame.sort_values(["model", "n_train", "seed", "_order", "precision"]).drop(columns="_order")
    return frame.reset_index(drop=True)


def _with_drop(frame: pd.DataFrame) -> pd.DataFrame:
    reference = frame[(frame["runtime"] == "pytorch") & (frame["precision"] == "fp32")].set_index("run_id")["test_acc"]
    frame["drop_from_fp32"] = frame["run_id"].map(reference).astype(float) - frame["test_acc"].astype(float)
    return frame


def deployment_csv(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The rows of ``report/deployment.csv`` (CSV_COLUMNS): for every measured variant (failed
    ones left out) one row per thread setting, one thread and all of them (``threads``)."""
    done = table[table["status"] == "done"]
    rows = []
    for _, r in done.iterrows():
        for suffix, threads in (("1t", 1), ("all", r["threads_all"])):
            rows.append(
                {
                    "arm": r["model"],
                    "dataset": dataset,
                    "n_train": r["n_train"],
                    "runtime": r["runtime"],
                    "precision": r["precision"],
                    "size_mb": r["size_mb"],
                    "latency_p50_ms": r[f"latency_p50_ms_{suffix}"],
                    "latency_p95_ms": r[f"latency_p95_ms_{suffix}"],
                    "threads": threads,
                    "test_acc": r["test_acc"],
                }
            )
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    for col in ("n_train", "threads"):
        frame[col] = pd.to_numeric(frame[col]).astype("Int64")
    return frame


def pareto_front(latency: pd.Series | np.ndarray, accuracy: pd.Series | np.ndarray) -> np.ndarray:
    """Whether each point is Pareto-optimal: no other point is at least as fast and as accurate
    and strictly better in one of the two."""
    lat, acc = np.asarray(latency, float), np.asarray(accuracy, float)
    optimal = np.ones(len(lat), bool)
    for i in range(len(lat)):
        better = (lat <= lat[i]) & (acc >= acc[i]) & ((lat < lat[i]) | (acc > acc[i]))
        optimal[i] = not better.any()
    return optimal


def with_front(table: pd.DataFrame) -> pd.DataFrame:
    """The measured variants with a ``pareto`` column: optimal among the variants of the same
    training-set size, in test accuracy against p50 latency with one thread."""
    done = table[(table["status"] == "done") & table["latency_p50_ms_1t"].notna()].copy()
    done["pareto"] = False
    for _, g in done.groupby("n_train"):
        done.loc[g.index, "pareto"] = pareto_front(g["latency_p50_ms_1t"], g["test_acc"])
    return done


def best_within_budget(table: pd.DataFrame, latency_ms: float = 0.0, size_mb: float = 0.0) -> pd.DataFrame:
    """Per training-set size (CHOICE_COLUMNS): the most accurate measured variant whose p50
    latency with one thread is at most ``latency_ms`` and whose file is at most ``size_mb``
    (0 = no budget on that), ties to the faster; ``model`` is missing where none fits.
    ``n_fitting`` of ``n_variants`` measured variants fit."""
    done = table[(table["status"] == "done")]
    rows = []
    for n_train, g in done.groupby("n_train", sort=True):
        fits = g
        if latency_ms:
            fits = fits[fits["latency_p50_ms_1t"] <= latency_ms]
        if size_mb:
            fits = fits[fits["size_mb"] <= size_mb]
        row = {"n_train": int(n_train), "fraction": float(g["fraction"].mean()), "n_fitting": len(fits)}
        row["n_variants"] = len(g)
        if len(fits):
            best = fits.sort_values(["test_acc", "latency_p50_ms_1t"], ascending=[False, True]).iloc[0]
            row.update({c: best[c] for c in ("model", "runtime", "precision", "test_acc", "latency_p50_ms_1t")})
            row["size_mb"] = best["size_mb"]
        rows.append(row)
    return pd.DataFrame(rows, columns=CHOICE_COLUMNS)
