"""How much of the seed-to-seed variance of accuracy the data split explains, for studies run
with ``data.split_per_seed`` (each seed its own stratified test and validation split).

With one split per seed, the split and the seed change together: the variance between seeds is
that of the whole procedure (the training seed, the training pool and validation drawn with the
split, and the test set drawn with it), and no design with one split per seed can tell the seed
apart from the pool. One part can be told apart: given a trained model, the test set is a
stratified random sample of the images, so its sampling variance follows from the model's own
per-class accuracies, without reference to other seeds:

    Var_test = sum_c (n_c / n)^2 * s_c^2 / n_c * (1 - n_c / N_c),

with s_c^2 = n_c / (n_c - 1) * p_c (1 - p_c) the per-class variance of right answers, n_c the
class's test images, N_c the class's images the test was drawn from (finite-population
correction) and n the test set's size. Averaged over a cell's runs it is the expected test
sampling variance E[Var(acc | model)]; the between-seed variance of the cell estimates the total
(law of total variance), and the rest, total - test, is what training contributes (seed, pool and
validation together). The total has only S - 1 degrees of freedom, so a share from 3 seeds is a
rough figure: its interval (chi-square on the total) is given with it.

torch-free.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.load import StudyData

SPLIT_VARIANCE_COLUMNS = [
    "model",
    "n_train",
    "n_seeds",
    "sd_total",  # between-seed standard deviation of accuracy (fraction)
    "sd_test_sampling",  # the test set's sampling, from each run's per-class accuracies
    "sd_training",  # sqrt(max(total - test, 0)): seed, training pool and validation together
    "share_test",  # test sampling / total variance, at most 1
    "share_low",  # the share's 95% interval from the total's chi-square (S - 1 df)
    "share_high",
]


def item_sampling_variance(y_true: np.ndarray, y_pred: np.ndarray, population: np.ndarray | None = None) -> float:
    """The sampling variance of one run's accuracy over stratified random test sets of the same
    per-class sizes (``population``: images per class the test was drawn from; None: no
    finite-population correction)."""
    y_true = np.asarray(y_true)
    n = len(y_true)
    if n == 0:
        return float("nan")
    total = 0.0
    for c in np.unique(y_true):
        right = (y_pred[y_true == c] == c).astype(float)
        n_c = len(right)
        if n_c < 2:
            continue
        s2 = right.var(ddof=1)
        fpc = 1.0 - n_c / population[c] if population is not None and population[c] > 0 else 1.0
        total += (n_c / n) ** 2 * s2 / n_c * max(fpc, 0.0)
    return float(total)


def share_interval(test_var: float, total: float, df: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """The test set's share of the between-seed variance ``total`` (``df`` degrees of freedom),
    and its interval: total * df / chi2 brackets the true total (normal seeds), and the share
    moves inversely with it; ``test_var``, an average over the cell's runs and items, is taken as
    known. Shares are capped at 1."""
    if total <= 0:
        return 1.0, 0.0, 1.0
    hi_total = total * df / stats.chi2.ppf((1 - confidence) / 2, df)
    lo_total = total * df / stats.chi2.ppf((1 + confidence) / 2, df)
    return min(test_var / total, 1.0), min(test_var / hi_total, 1.0), min(test_var / lo_total, 1.0)


def split_variance(data: StudyData, confidence: float = 0.95) -> pd.DataFrame:
    """Per arm and size, the between-seed variance of accuracy split into the test set's sampling
    and the rest (SPLIT_VARIANCE_COLUMNS); no rows for a study with one split for every seed, or
    whose test set is the dataset's official one (then the test set does not vary)."""
    if not data.split_per_seed or (data.dataset or {}).get("official_test_split"):
        return pd.DataFrame(columns=SPLIT_VARIANCE_COLUMNS)
    counts = np.asarray((data.dataset or {}).get("class_counts") or [], float)
    population = counts if len(counts) else None
    done = data.done[data.done["test_acc"].notna()]
    rows = []
    for (model, n_train), cell in done.groupby(["arm", "n_train"], sort=True):
        ids = [r for r in cell["run_id"] if r in data.predictions]
        if len(cell) < 2 or not ids:
            continue
        test_var = float(
            np.mean([item_sampling_variance(data.labels_of(r), data.predictions[r], population) for r in ids])
        )
        total = float(cell["test_acc"].var(ddof=1))
        share, low, high = share_interval(test_var, total, len(cell) - 1, confidence)
        rows.append(
            {
                "model": model,
                "n_train": int(n_train),
                "n_seeds": len(cell),
                "sd_total": float(np.sqrt(total)),
                "sd_test_sampling": float(np.sqrt(test_var)),
                "sd_training": float(np.sqrt(max(total - test_var, 0.0))),
                "share_test": share,
                "share_low": low,
                "share_high": high,
            }
        )
    return pd.DataFrame(rows, columns=SPLIT_VARIANCE_COLUMNS)
