"""Confusion matrices of the test predictions stored for every finished run."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.load import StudyData

CONFUSION_COLUMNS = ["model", "n_train", "n_runs", "true", "predicted", "true_name", "predicted_name", "count", "share"]


def confusion_matrices(data: StudyData, n_train: int | None = None) -> pd.DataFrame:
    """Test confusion counts per model at one size (default: the largest, i.e. full data),
    summed over that size's finished runs (CONFUSION_COLUMNS; one row per (true, predicted)
    class pair). ``share`` is the count over the true class's total: the diagonal holds each
    class's recall. With per-seed splits each run is counted against its own test labels."""
    done = data.done
    if done.empty:
        return pd.DataFrame(columns=CONFUSION_COLUMNS)
    n_train = int(done["n_train"].max()) if n_train is None else n_train
    k = max(len(data.class_names), int(data.y_test.max(initial=-1)) + 1)
    names = data.class_names if len(data.class_names) == k else [str(c) for c in range(k)]
    frames = []
    for model, runs in done[done["n_train"] == n_train].groupby("model", sort=True):
        ids = [r for r in runs["run_id"] if r in data.predictions]
        if not ids:
            continue
        # One bincount per run: sklearn's confusion_matrix gives the same counts, but importing
        # sklearn.metrics takes seconds, which every report would pay for one line.
        counts = sum(
            np.bincount(k * data.labels_of(r).astype(np.int64) + data.predictions[r], minlength=k * k).reshape(k, k)
            for r in ids
        )
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        true, pred = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        frames.append(
            pd.DataFrame(
                {
                    "model": model,
                    "n_train": n_train,
                    "n_runs": len(ids),
                    "true": true.ravel(),
                    "predicted": pred.ravel(),
                    "true_name": [names[i] for i in true.ravel()],
                    "predicted_name": [names[i] for i in pred.ravel()],
                    "count": counts.ravel(),
                    "share": share.ravel(),
                }
            )
        )
    return (
        pd.concat(frames, ignore_index=True)[CONFUSION_COLUMNS] if frames else pd.DataFrame(columns=CONFUSION_COLUMNS)
    )
