"""The model x size grid that ``study status`` prints: runs done / running / left per cell, the
mean test accuracy so far, and an estimate of the time left. Torch-free: reads a runs table
(``analysis.load.RUN_COLUMNS``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

LEFT = ("pending",)  # statuses still to be run (failed runs wait for --retry-failed)


def grid_lines(runs: pd.DataFrame) -> list[str]:
    """The grid as printable lines: one row per model, one column per training-set size; each
    cell 'done/running/left' and the mean test accuracy of its finished runs."""
    if runs.empty:
        return []
    sizes = sorted(runs["n_train"].unique())
    models = list(dict.fromkeys(runs["model"]))
    cells = {}
    for (model, n), g in runs.groupby(["model", "n_train"]):
        done = g[g["status"] == "done"]
        counts = f"{len(done)}/{int((g['status'] == 'running').sum())}/{int(g['status'].isin(LEFT).sum())}"
        acc = f" {100 * done['test_acc'].mean():.1f}%" if len(done) and done["test_acc"].notna().any() else ""
        cells[(model, n)] = counts + acc
    first = max(len("model"), *(len(m) for m in models))
    width = max(12, *(len(v) for v in cells.values()), *(len(f"{int(n):,} images") for n in sizes))
    header = "model".ljust(first) + "".join(f"  {f'{int(n):,} images':>{width}}" for n in sizes)
    lines = ["runs done/running/left and mean test accuracy so far, per model and training-set size:", header]
    for m in models:
        lines.append(m.ljust(first) + "".join(f"  {cells.get((m, n), '—'):>{width}}" for n in sizes))
    return lines


def seconds_left(runs: pd.DataFrame, workers: int) -> float:
    """Seconds until every run left is done: each run left takes the mean training time of the
    finished runs of its model and size (else of its model, scaled by training-set size), a
    running one half of that, shared over ``workers`` parallel workers. NaN before any run of a
    model has finished."""
    done = runs[(runs["status"] == "done") & runs["train_seconds"].notna()]
    todo = runs[runs["status"].isin(LEFT + ("running",))]
    if todo.empty:
        return 0.0
    cell_mean = done.groupby(["model", "n_train"])["train_seconds"].mean()
    per_image = (done["train_seconds"] / done["n_train"].clip(lower=1)).groupby(done["model"]).mean()
    total = 0.0
    for r in todo.itertuples():
        if (r.model, r.n_train) in cell_mean.index:
            estimate = cell_mean[(r.model, r.n_train)]
        elif r.model in per_image.index:
            estimate = per_image[r.model] * r.n_train
        else:
            return float("nan")
        total += estimate * (0.5 if r.status == "running" else 1.0)
    return total / max(1, workers)


def eta_line(runs: pd.DataFrame, workers: int) -> str:
    """'time left: about 3 min (...)' or why there is no estimate yet."""
    left = seconds_left(runs, workers)
    if left == 0:
        return "time left: none, every run has finished or failed"
    if not np.isfinite(left):
        return "time left: unknown until every model has finished a run"
    text = f"{math.ceil(left / 60)} min" if left >= 60 else f"{math.ceil(left)} s"
    return (
        f"time left: about {text} (mean training time of the finished runs of each model and size, "
        f"shared over {max(1, workers)} worker(s))"
    )
