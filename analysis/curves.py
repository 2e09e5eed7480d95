"""Learning curves: test accuracy against the number of training images, per model."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def summarize(runs: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> pd.DataFrame:
    """Mean and confidence interval over seeds at each training-set size, per model.

    Input: finished runs (columns model, n_train, fraction, seed, ``metric``).
    Output columns: model, n_train, fraction, n_seeds, mean, std, ci_low, ci_high. The interval
    is Student's t over seeds (a seed fixes the subset, so seeds are the unit of replication);
    with one seed it is the point itself.
    """
    rows = []
    for (model, n_train), group in runs.groupby(["model", "n_train"], sort=True):
        values = group[metric].to_numpy(dtype=float)
        n = len(values)
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if n > 1 else 0.0
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0
        rows.append(
            {"model": model, "n_train": int(n_train), "fraction": float(group["fraction"].mean()), "n_seeds": n,
             "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}
        )
    return pd.DataFrame(rows, columns=["model", "n_train", "fraction", "n_seeds", "mean", "std", "ci_low", "ci_high"])
