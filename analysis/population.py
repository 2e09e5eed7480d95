"""Accuracy on the population the test set was drawn from: seeds and test items as two sources
of noise.

The seed-only interval (``curves.summarize``) answers "this training procedure on this test
set". A reader who compares a model's accuracy with another paper's asks about the population
of images the test set was drawn from, and a test set of a few hundred images has a sampling
error of its own (0.5-3 points) that no number of seeds removes. Here every run of a
(model, size) cell is scored item by item on the shared test set, which makes a seeds x items
table of 0/1 outcomes, a crossed two-way layout y_si = mu + a_s + b_i + e_si (a: the seed's
luck, b: the item's difficulty, e: their interaction). The mean over the table estimates mu,
the expected accuracy of the procedure on the item population, with variance

    Var = sigma2_seed / S + sigma2_item / N + sigma2_resid / (S N)

whose components come from the two-way ANOVA mean squares (method of moments, a negative
component set to 0), and Satterthwaite's degrees of freedom for the linear combination of mean
squares (S - 1 when seeds dominate, N - 1 when items do). The interval is Wilson's score
interval with the effective number of items n_eff = p (1 - p) / Var (capped at S N) and Student
t at those degrees of freedom in place of z: it lies inside [0, 1] by construction and has a
non-zero width whenever the test set is finite (at 100% on N items: [N / (N + t^2), 1]).
Without per-item predictions the item term is the binomial bound p (1 - p) / N. Its coverage of
the population accuracy is measured by ``benchmarks/bench_calibration.py`` (rows
``cov_population_accuracy``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

POPULATION_COLUMNS = [
    "model",
    "n_train",
    "n_seeds",
    "n_test",
    "mean",
    "se_seed",
    "se_item",
    "se",
    "df",
    "ci_low",
    "ci_high",
    "method",
]
ITEMS = "seeds and test items (variance components)"
BINOMIAL = "seeds and a binomial test-set term (no per-item predictions)"
NESTED = "seeds, each scored on its own test split (their spread carries the test-set sampling)"


def _satterthwaite(coefs: np.ndarray, mean_squares: np.ndarray, dfs: np.ndarray) -> float:
    terms = coefs * mean_squares
    denominator = float(np.sum(terms**2 / dfs))
    return float(np.sum(terms) ** 2 / denominator) if denominator > 0 else np.nan


def _no_interval(p: float) -> dict[str, float]:
    """The mean ``p`` with every other column of an interval row NaN (what too few seeds give)."""
    return {
        "mean": p,
        "se_seed": np.nan,
        "se_item": np.nan,
        "se": np.nan,
        "df": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
    }


def wilson_interval(p: float, n_eff: float, df: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``p`` with an effective sample size ``n_eff``
    and Student t at ``df`` degrees of freedom in place of z (a design-based proportion's
    interval, as for complex surveys): inside [0, 1], never of zero width."""
    t = float(stats.t.ppf(0.5 + confidence / 2, df)) if np.isfinite(df) else float(stats.norm.ppf(0.5 + confidence / 2))
    t2n = t * t / n_eff
    centre = (p + t2n / 2) / (1 + t2n)
    half = t / (1 + t2n) * np.sqrt(p * (1 - p) / n_eff + t2n / (4 * n_eff))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def population_interval(correct: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Mean, standard errors, degrees of freedom and interval of the population accuracy from a
    (seeds, items) array of per-item correctness (see the module's docstring). NaN interval
    with fewer than two seeds: the seed term is then unknown."""
    y = np.asarray(correct, dtype=float)
    s, n = y.shape
    p = float(y.mean())
    out = _no_interval(p)
    if s < 2 or n < 2:
        return out
    seed_means, item_means = y.mean(axis=1), y.mean(axis=0)
    ms_seed = n * float(np.sum((seed_means - p) ** 2)) / (s - 1)
    ms_item = s * float(np.sum((item_means - p) ** 2)) / (n - 1)
    resid = y - seed_means[:, None] - item_means[None, :] + p
    ms_res = float(np.sum(resid**2)) / ((s - 1) * (n - 1))
    # Var = sigma2_seed/S + sigma2_item/N + sigma2_res/(SN) = (MS_seed + MS_item - MS_res)/(SN);
    # a negative component (MS below MS_res) is set to 0, which drops MS_res from the sum
    seed_part, item_part = ms_seed > ms_res, ms_item > ms_res
    coefs = np.array([float(seed_part), float(item_part), 1.0 - seed_part - item_part]) / (s * n)
    mean_squares = np.array([ms_seed, ms_item, ms_res])
    dfs = np.array([s - 1, n - 1, (s - 1) * (n - 1)], dtype=float)
    var = float(coefs @ mean_squares)
    out["se_seed"] = float(np.sqrt(max(ms_seed - ms_res, 0.0) / n / s))
    out["se_item"] = float(np.sqrt(max(ms_item - ms_res, 0.0) / s / n))
    return {**out, **_interval(p, var, _satterthwaite(coefs, mean_squares, dfs), n, s * n, confidence)}


def binomial_population_interval(accuracies: np.ndarray, n_test: int, confidence: float = 0.95) -> dict[str, float]:
    """The population interval from per-seed accuracies alone: the seed term from their spread,
    the item term bounded by the binomial p (1 - p) / n_test (the item variance of a 0/1
    outcome is at most that), Satterthwaite's degrees of freedom."""
    a = np.asarray(accuracies, dtype=float)
    s = len(a)
    p = float(a.mean())
    out = _no_interval(p)
    if s < 2 or not n_test:
        return out
    v_seed, v_item = float(a.var(ddof=1)) / s, p * (1 - p) / n_test
    df = _satterthwaite(np.ones(2), np.array([v_seed, v_item]), np.array([s - 1, n_test - 1], dtype=float))
    out.update(se_seed=np.sqrt(v_seed), se_item=np.sqrt(v_item))
    return {**out, **_interval(p, v_seed + v_item, df, n_test, s * n_test, confidence)}


def nested_population_interval(accuracies: np.ndarray, n_test: int, confidence: float = 0.95) -> dict[str, float]:
    """The population interval when every seed drew its own test split (``data.split_per_seed``):
    items are nested in seeds, so each seed's accuracy is the procedure's population accuracy
    plus its seed's luck plus its own test set's sampling, and their spread over seeds carries
    both: Var = s^2 / S on S - 1 degrees of freedom (Student t, in Wilson's form so that it stays
    inside [0, 1]). When every seed scored the same (s = 0) the interval is Wilson's with the test
    sampling alone, p (1 - p) / (S n_test) and z: never of zero width. Measured against the
    alternatives in bench_calibration (cov_split_population, 60 studies x 12 cells per seed count
    at 3 / 5 / 10 seeds): this 0.96 / 0.95 / 0.94; never narrower than the test sampling alone
    0.98 / 0.97 / 0.95; Satterthwaite's df on max(0, s^2 / S - v_item) + v_item 0.93 / 0.94 /
    0.94. The crossed seeds x items layout of ``population_interval`` would be wrong here: seed
    s's item i is not seed t's."""
    a = np.asarray(accuracies, dtype=float)
    s = len(a)
    p = float(a.mean())
    out = _no_interval(p)
    if s < 2 or not n_test:
        return out
    var, v_item = float(a.var(ddof=1)) / s, p * (1 - p) / (s * n_test)
    out.update(se_seed=float(np.sqrt(max(var - v_item, 0.0))), se_item=float(np.sqrt(v_item)))
    if var > 0 and 0 < p < 1:
        lo, hi = wilson_interval(p, p * (1 - p) / var, s - 1, confidence)
        return {**out, "se": float(np.sqrt(var)), "df": float(s - 1), "ci_low": lo, "ci_high": hi}
    lo, hi = wilson_interval(p, float(s * n_test), np.inf, confidence)  # the test sampling alone
    return {**out, "se": float(np.sqrt(v_item)), "df": np.inf, "ci_low": lo, "ci_high": hi}


def _interval(p: float, var: float, df: float, n_items: int, n_cap: int, confidence: float) -> dict[str, float]:
    if var > 0 and 0 < p < 1:
        n_eff = min(p * (1 - p) / var, float(n_cap))
    else:  # every run scored every item the same: the items are all the evidence there is
        n_eff, df = float(n_items), float(n_items - 1)
    if not np.isfinite(df):
        df = float(n_items - 1)
    lo, hi = wilson_interval(p, n_eff, df, confidence)
    return {"se": float(np.sqrt(max(var, 0.0))), "df": float(df), "ci_low": lo, "ci_high": hi}


def population_accuracy(
    runs: pd.DataFrame,
    predictions: dict[int, np.ndarray] | None,
    y_test: np.ndarray | None,
    confidence: float = 0.95,
    metric: str = "test_acc",
    split_per_seed: bool = False,
) -> pd.DataFrame:
    """Per (model, n_train) the mean accuracy with its population interval (POPULATION_COLUMNS):
    from the seeds x items table of the runs' stored test predictions where every run has
    them (``population_interval``), else from the accuracies with the binomial bound
    (``binomial_population_interval``); with ``split_per_seed`` (each seed its own test split of
    ``len(y_test)`` images) from the accuracies over seeds (``nested_population_interval``). No
    interval without a known test-set size or with one seed. ``runs``: finished runs (model,
    n_train, seed, ``metric``, run_id)."""
    n_test = len(y_test) if y_test is not None and len(y_test) else None
    rows = []
    for (model, n_train), group in runs.groupby(["model", "n_train"], sort=True):
        group = group.drop_duplicates("seed")
        ids = group["run_id"].tolist() if "run_id" in group else []
        have = predictions is not None and n_test and ids and all(i in predictions for i in ids)
        if split_per_seed and n_test:
            r, method = nested_population_interval(group[metric].to_numpy(float), n_test, confidence), NESTED
        elif have:
            correct = np.array([predictions[i] == y_test for i in ids])
            r, method = population_interval(correct, confidence), ITEMS
        else:
            r = binomial_population_interval(group[metric].to_numpy(float), n_test or 0, confidence)
            method = BINOMIAL if n_test else "no interval: the test-set size is unknown"
        if len(group) < 2:
            method = "no interval: one seed (the seed term is unknown)"
        rows.append({"model": model, "n_train": int(n_train), "n_seeds": len(group), "n_test": n_test or 0, **r})
        rows[-1]["method"] = method
    return pd.DataFrame(rows, columns=POPULATION_COLUMNS)
