"""What each model costs: to run (parameters, MACs, size, CPU latency, measured once per model by
the study side into ``model_costs``) and to train (seconds, throughput and memory of the runs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.load import COST_COLUMNS

# The stored cost columns (analysis.load), less their free-form details, with whether they were measured.
MODEL_COST_COLUMNS = ["model", "measured"] + [c for c in COST_COLUMNS if c not in ("model", "details")]
TRAINING_COST_COLUMNS = [
    "model",
    "size_kind",
    "size_value",
    "fraction",
    "n_train",
    "n_runs",
    "train_seconds",
    "train_seconds_std",
    "seconds_per_epoch",
    "epochs_run",
    "images_per_second",
    "peak_memory_mb",
]
TIME_TO_TARGET_COLUMNS = ["model", "target", "n_train", "train_seconds", "note"]


def model_costs(costs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per model of the study (MODEL_COST_COLUMNS) from the ``model_costs`` table.

    ``measured`` says whether the model's costs were stored; for a model that was not, every
    cost is missing except n_params, taken from its runs. Latencies are CPU inference at batch
    1 in milliseconds, p50 and p95, with one thread (``_1t``) and with ``threads_all`` threads.
    """
    models = sorted(set(runs["model"]) | set(costs["model"]))
    table = (
        costs.drop(columns=[c for c in costs.columns if c not in MODEL_COST_COLUMNS]).set_index("model").reindex(models)
    )
    table.insert(0, "measured", table.index.isin(costs["model"]))
    if "n_params" in runs:  # every run counts its parameters: a fallback where costs are missing
        from_runs = runs.dropna(subset=["n_params"]).groupby("model")["n_params"].first()
        table["n_params"] = table["n_params"].astype("Float64").fillna(from_runs.reindex(table.index).astype("Float64"))
    table = table.reset_index().rename(columns={"index": "model"})
    for col in ("input_size", "n_params", "threads_all"):
        table[col] = pd.to_numeric(table[col]).round().astype("Int64")
    return table[MODEL_COST_COLUMNS]


def training_costs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model and size, over the finished runs (TRAINING_COST_COLUMNS): mean training
    seconds per run (validation included) and its std, seconds per epoch (an epoch of the budget
    policy), epochs run, training images per second and peak memory (MB; the process's
    resident set on CPU, CUDA's peak allocation on a GPU)."""
    rows = []
    for (model, kind, value), g in runs.groupby(["model", "size_kind", "size_value"], sort=True):
        seconds = g["train_seconds"].astype(float)
        epochs = g["epochs_run"].astype(float)
        rows.append(
            {
                "model": model,
                "size_kind": kind,
                "size_value": float(value),
                "fraction": float(g["fraction"].mean()),
                "n_train": int(g["n_train"].iloc[0]),
                "n_runs": len(g),
                "train_seconds": float(seconds.mean()),
                "train_seconds_std": float(seconds.std(ddof=1)) if len(g) > 1 else np.nan,
                "seconds_per_epoch": float((seconds / epochs.where(epochs > 0)).mean()),
                "epochs_run": float(epochs.mean()),
                "images_per_second": float(g["images_per_second"].astype(float).mean()),
                "peak_memory_mb": float(g["peak_memory_mb"].astype(float).max()),
            }
        )
    return pd.DataFrame(rows, columns=TRAINING_COST_COLUMNS).sort_values(["model", "n_train"]).reset_index(drop=True)


def time_to_target(summary: pd.DataFrame, training: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Training time to reach each target accuracy (TIME_TO_TARGET_COLUMNS): the mean seconds of
    one run at the smallest measured size whose mean test accuracy reaches the target. Measured,
    not extrapolated: a model that reaches the target at no measured size has no time."""
    rows = []
    for model in sorted(summary["model"].unique()):
        s = summary[summary["model"] == model].sort_values("n_train")
        for target in targets["target"]:
            reached = s[s["mean"] >= target]
            if reached.empty:
                rows.append(
                    {
                        "model": model,
                        "target": target,
                        "n_train": pd.NA,
                        "train_seconds": np.nan,
                        "note": "target not reached at any measured size",
                    }
                )
                continue
            n = int(reached["n_train"].iloc[0])
            cost = training[(training["model"] == model) & (training["n_train"] == n)]
            rows.append(
                {
                    "model": model,
                    "target": target,
                    "n_train": n,
                    "train_seconds": float(cost["train_seconds"].iloc[0]) if len(cost) else np.nan,
                    "note": "",
                }
            )
    frame = pd.DataFrame(rows, columns=TIME_TO_TARGET_COLUMNS)
    frame["n_train"] = frame["n_train"].astype("Int64")
    return frame
