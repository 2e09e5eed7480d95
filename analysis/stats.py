"""Are the differences between models real? Paired comparisons per size, rank tests across the
whole study, multiple-comparison corrections and the seeds a test would need.

Runs of different models with the same seed share their training subset (a seed fixes the
nested subsets), so comparisons pair them by seed, and seeds are the replicates: intervals and
tests have S - 1 degrees of freedom, never one per (size, seed) pair or per test item. A seed's
luck carries across sizes, so rank tests use seeds as blocks (ranks averaged over sizes). All
seeds share one test set: McNemar's test (test-set noise) is run per seed and combined by
Bonferroni, which is valid under any dependence between seeds. Accuracy moves in steps of
1 / n_test, so a spread below that is a constant difference (``difference_floor``), not float
noise to divide by. Tests come from scipy; Holm's correction and the Nemenyi post-hoc test are a
few lines written here. Their calibration is measured by ``benchmarks/bench_calibration.py``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

PAIRWISE_COLUMNS = [
    "size_kind",
    "size_value",
    "fraction",
    "n_train",
    "model_a",
    "model_b",
    "n_pairs",
    "mean_a",
    "mean_b",
    "diff",
    "ci_low",
    "ci_high",
    "t_stat",
    "p_t",
    "w_stat",
    "p_wilcoxon",
    "mcnemar_b",
    "mcnemar_c",
    "p_mcnemar",
    "p_a_better",
    "p_t_holm",
    "p_wilcoxon_holm",
    "p_mcnemar_holm",
    "significant",
    "n_nonzero",
    "min_p_wilcoxon",
    "seeds_for_power",
    "note",
]
MCNEMAR_COLUMNS = ["size_kind", "size_value", "n_train", "model_a", "model_b", "seed", "b", "c", "p_mcnemar"]
RANK_COLUMNS = ["model", "average_rank", "n_blocks"]
FRIEDMAN_COLUMNS = ["n_models", "n_blocks", "statistic", "p_value", "critical_difference", "alpha", "note"]
FRIEDMAN_BY_SIZE_COLUMNS = ["n_train", "n_models", "n_blocks", "statistic", "p_value", "note"]
POSTHOC_COLUMNS = ["model_a", "model_b", "rank_a", "rank_b", "rank_difference", "p_nemenyi", "significant"]


# -- building blocks ---------------------------------------------------------------------------

EQUIVALENCE_MARGIN = 0.01  # two models tie when their paired difference's 95% CI lies within ±1 pp


def equivalent(ci_low, ci_high, margin: float = EQUIVALENCE_MARGIN) -> bool:
    """Whether a paired difference's interval lies within ±``margin``: the models tie (with a
    95% interval, two one-sided tests at 2.5% each). A wide interval around a non-significant
    gap is not a tie: the data cannot tell the models apart, which is all it says."""
    if ci_low is None or ci_high is None or pd.isna(ci_low) or pd.isna(ci_high):
        return False
    return bool(-margin <= float(ci_low) and float(ci_high) <= margin)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values; NaN entries stay NaN and do not
    count towards the family size."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired per-item correctness: (b, c, two-sided p), where b counts
    items A got right and B wrong, c the reverse; p is the exact binomial test of b against
    b + c trials with probability 1/2 (1 when there is no discordant item)."""
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    # the binomial(b + c, 1/2) is symmetric, so the exact two-sided p is twice the smaller tail
    p = 1.0 if b + c == 0 else float(min(1.0, 2 * stats.binom.cdf(min(b, c), b + c, 0.5)))
    return b, c, p


def accuracy_floor(n_test: int | None) -> float:
    """The smallest standard deviation one accuracy on ``n_test`` items is taken to have: it is
    rounded to 1 / n_test, which carries rounding noise of sd 1 / (n_test * sqrt(12)). Seeds that
    all score the same (the spread of their sample is 0) do not make a mean exact."""
    return 1.0 / (n_test * np.sqrt(12.0)) if n_test else 0.0


def difference_floor(n_test: int | None) -> float:
    """The smallest standard deviation a difference of two accuracies on ``n_test`` items is
    taken to have: each accuracy is rounded to 1 / n_test, and a difference of two rounded
    values carries rounding noise of sd 1 / (n_test * sqrt(6)). A spread of paired differences
    below it is a constant difference (k test images on every seed), not float noise to divide
    by. Without a known test-set size: a relative float tolerance only."""
    return 1.0 / (n_test * np.sqrt(6.0)) if n_test else 0.0


def t_summary(
    values: np.ndarray, confidence: float = 0.95, floor: float = 0.0, alternative: str = "two-sided"
) -> dict[str, float]:
    """Student t inference on the mean of ``values`` (one per seed): mean, sd (raised to
    ``floor``, see ``difference_floor``), the two-sided ``confidence`` interval, t and its p
    against 0. The interval and the test agree by construction (0 lies outside the 95% interval
    exactly when the two-sided p < 0.05). NaN where fewer than two values or no spread at all
    and no floor (then ``constant`` is 1)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    out = {"mean": float(v.mean()) if n else np.nan, "sd": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    out.update(t_stat=np.nan, p=np.nan, constant=0.0)
    if n < 2:
        return out
    sd = float(v.std(ddof=1))
    scale = max(1.0, float(np.abs(v).max()))
    if sd <= 1e-12 * scale or sd < floor:
        out["constant"] = float(sd < max(floor, 1e-12 * scale))
        if floor <= 0:
            out.update(sd=0.0, ci_low=out["mean"], ci_high=out["mean"])
            return out
        sd = max(sd, floor)
    se = sd / np.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * se)
    t = out["mean"] / se
    if alternative == "greater":
        p = float(stats.t.sf(t, n - 1))
    elif alternative == "less":
        p = float(stats.t.cdf(t, n - 1))
    else:
        p = float(2 * stats.t.sf(abs(t), n - 1))
    out.update(sd=sd, ci_low=out["mean"] - half, ci_high=out["mean"] + half, t_stat=float(t), p=p)
    return out


def distinct_resamples(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct bootstrap resample of ``n`` values (as counts per value, C(2n - 1, n) of
    them: 10 for 3 seeds, 126 for 5) with its probability under uniform resampling (the
    multinomial weight). Drawing 200 at random repeats most of them and misses others."""
    from itertools import combinations_with_replacement
    from math import factorial

    counts = []
    for combo in combinations_with_replacement(range(n), n):
        counts.append(np.bincount(combo, minlength=n))
    counts = np.array(counts)
    weights = np.array([factorial(n) / np.prod([factorial(int(c)) for c in row]) for row in counts], float)
    return counts, weights / weights.sum()


WILCOXON_EXACT_MAX = 16  # 2^16 sign patterns


def wilcoxon_signed_rank(d: np.ndarray, n_test: int | None = None) -> tuple[float, float]:
    """Wilcoxon's signed-rank test of non-zero paired differences ``d`` (differences below one
    test image already dropped, Wilcoxon's own rule for zeros): (min(W+, W-), two-sided p).
    The p is exact over every sign pattern with mid-ranks for ties (accuracies move in steps of
    1 / n_test, so tied differences are common); scipy's normal approximation above
    WILCOXON_EXACT_MAX differences. With ``n_test`` the differences are ranked in whole test
    images: k/400 - k'/400 for equal image counts differ by 1e-17 as floats, and ranking the
    raw floats would give distinct ranks where the counts tie (p 0.1875 instead of 0.25)."""
    d = np.asarray(d, dtype=float)
    if n_test:
        d = np.round(d * n_test)  # in test images
    n = len(d)
    ranks = stats.rankdata(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    w = min(w_plus, float(ranks.sum()) - w_plus)
    if n > WILCOXON_EXACT_MAX:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return w, float(stats.wilcoxon(d, method="approx").pvalue)
    signs = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # every sign pattern
    null = signs @ ranks
    centre = ranks.sum() / 2
    p = float(np.mean(np.abs(null - centre) >= abs(w_plus - centre) - 1e-9))
    return w, min(p, 1.0)


def min_p_wilcoxon(n_pairs: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with
    ``n_pairs`` non-zero differences: 2 / 2^n (every difference of the same sign)."""
    return float(min(1.0, 2.0 / 2.0**n_pairs)) if n_pairs > 0 else 1.0


def seeds_needed_wilcoxon(alpha: float = 0.05, n_comparisons: int = 1) -> int:
    """The fewest paired seeds with which the exact Wilcoxon test can reach ``alpha`` at all,
    after a Holm (worst-case Bonferroni) correction over ``n_comparisons``."""
    n = 1
    while min_p_wilcoxon(n) > alpha / max(n_comparisons, 1):
        n += 1
    return n


def _nct_sf(x, df, nc) -> np.ndarray:
    """P(T > x) for a noncentral t with ``df`` degrees of freedom and noncentrality ``nc``.
    scipy's ``nct`` returns NaN far in a tail (``nct.cdf(-4.85, 4, 7.13)``: the true value is
    1.3e-17); there the normal approximation of Johnson and Kotz is used, accurate to well below
    the 1e-3 a power needs."""
    x, df, nc = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (x, df, nc)))
    with np.errstate(all="ignore"):
        p = np.asarray(stats.nct.sf(x, df, nc), dtype=float)
    bad = ~np.isfinite(p)
    if bad.any():
        xb, dfb, ncb = x[bad], df[bad], nc[bad]
        z = (xb * (1 - 1 / (4 * dfb)) - ncb) / np.sqrt(1 + xb**2 / (2 * dfb))
        p[bad] = stats.norm.sf(z)
    return p


def paired_t_power(effect_size: float, n_pairs: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with ``n_pairs`` pairs against a true standardised
    mean difference ``effect_size`` (mean / sd of the differences), from the noncentral t. The
    lower tail P(T < -crit) is computed as P(T > crit) under -nc (``_nct_sf``): scipy's
    ``nct.cdf`` gives NaN there at Holm-level alphas."""
    if n_pairs < 2:
        return 0.0
    return float(_power(abs(effect_size), np.array([n_pairs]), alpha)[0])


def _power(effect: float, n: np.ndarray, alpha: float) -> np.ndarray:
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * np.sqrt(n)
    return _nct_sf(crit, df, nc) + _nct_sf(crit, df, -nc)


def seeds_for_power(effect_size: float, alpha: float = 0.05, power: float = 0.8, limit: int = 1000) -> float:
    """The fewest paired seeds for which a paired t-test detects ``effect_size`` with ``power``;
    NaN when the effect is zero or undefined, inf beyond ``limit``."""
    if not np.isfinite(effect_size) or effect_size == 0:
        return np.nan
    for first in range(2, limit + 1, 64):  # in chunks: most effects need few seeds
        n = np.arange(first, min(first + 64, limit + 1))
        reached = np.flatnonzero(_power(abs(effect_size), n, alpha) >= power)
        if len(reached):
            return float(n[reached[0]])
    return np.inf


def expanded_level(confidence: float, n: int) -> float:
    """The confidence level at which to read percentiles so that a bootstrap interval of a mean
    of ``n`` values covers at about ``confidence``: Hesterberg's (2015) expanded percentile
    interval, which widens by sqrt(n / (n - 1)) and swaps z for Student's t. Plain percentile
    and BCa intervals of a mean from 5-15 seeds cover only 82-89% at a nominal 95%."""
    alpha = 1 - confidence
    return float(1 - 2 * stats.norm.sf(np.sqrt(n / (n - 1)) * stats.t.ppf(1 - alpha / 2, n - 1)))


EXACT_BOOTSTRAP_MAX_SEEDS = 8  # C(15, 8) = 6,435 distinct resamples
# Below this many values the bootstrap interval of a mean cannot keep a 95% level: with 3 it is
# at most [min, max] (covers 0.75 for normal data), with 4-6 the exact bootstrap at the expanded
# level covered 0.88 / 0.93 / 0.93 in 2,000 simulated normal samples each, with 7 0.946.
BOOTSTRAP_MIN_VALUES = 7


def bootstrap_mean_ci(
    values: np.ndarray, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap interval of the mean of ``values`` read at the expanded level
    (``expanded_level``): with up to ``EXACT_BOOTSTRAP_MAX_SEEDS`` values, the exact bootstrap
    distribution over every distinct resample; beyond, percentiles of ``n_boot`` seeded resample
    means (scipy.stats.bootstrap). With fewer than ``BOOTSTRAP_MIN_VALUES`` values no bootstrap
    of a mean reaches the level (3 seeds: [min, max], which covers 0.75), so the Student t
    interval is returned instead, with a ``UserWarning`` that says so. The point itself when all
    values are equal; NaN with fewer than two values. (The report's paired differences use
    ``t_summary``.)"""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return np.nan, np.nan
    if np.ptp(values) <= 1e-12 * max(1.0, float(np.abs(values).max())):
        return float(values[0]), float(values[0])
    if len(values) < BOOTSTRAP_MIN_VALUES:
        warnings.warn(
            f"bootstrap_mean_ci: {len(values)} values cannot support a {confidence:.0%} bootstrap interval of a "
            f"mean ({BOOTSTRAP_MIN_VALUES} or more are needed); returning the Student t interval instead",
            UserWarning,
            stacklevel=2,
        )
        t = t_summary(values, confidence)
        return t["ci_low"], t["ci_high"]
    level = expanded_level(confidence, len(values))
    if len(values) <= EXACT_BOOTSTRAP_MAX_SEEDS:  # every distinct resample, weighted: no Monte Carlo error
        counts, weights = distinct_resamples(len(values))
        means = counts @ values / len(values)
        order = np.argsort(means, kind="stable")
        cdf = np.cumsum(weights[order])
        tail = (1 - level) / 2
        lo = means[order][np.searchsorted(cdf, tail - 1e-12)]
        hi = means[order][min(np.searchsorted(cdf, 1 - tail - 1e-12), len(cdf) - 1)]
        return float(lo), float(hi)
    res = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=n_boot,
        confidence_level=expanded_level(confidence, len(values)),
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


# -- pairwise comparisons ----------------------------------------------------------------------


@dataclass
class Comparisons:
    """pairwise: one row per (size, pair of models) (PAIRWISE_COLUMNS): diff = mean_a - mean_b
    over paired seeds with its Student t interval (``t_summary``: the question is "this training
    procedure on this test set", so seeds are the replicates), the paired t-test (the same
    computation, so interval and test agree), the Wilcoxon signed-rank test, McNemar's exact
    test run per seed and combined by Bonferroni over the paired seeds (p_mcnemar = min(1, S *
    smallest per-seed p): valid although the seeds share the test set; mcnemar_b / mcnemar_c
    are the discordant counts summed over seeds, for reading only), P(A > B) over paired seeds
    (ties count half), Holm-adjusted p-values (each test's family is the whole table),
    ``significant`` (Holm-adjusted paired t below alpha), n_nonzero (paired seeds whose
    difference is at least one test image), min_p_wilcoxon (the smallest p the Wilcoxon test
    could give with these seeds), seeds_for_power (paired seeds a t-test needs to detect the
    observed effect with 80% power at the Holm-adjusted level alpha / m of the first step) and a
    note when a test could not run or the difference is the same number of test images on
    every seed.
    mcnemar: McNemar's test per matched seed (MCNEMAR_COLUMNS).
    """

    pairwise: pd.DataFrame
    mcnemar: pd.DataFrame
    alpha: float
    n_test: int | None = None


def paired_comparisons(
    runs: pd.DataFrame,
    predictions: dict[int, np.ndarray] | None = None,
    y_test: np.ndarray | None = None,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    metric: str = "test_acc",
    n_test: int | None = None,
) -> Comparisons:
    """Compare every pair of models at every size, paired by seed (see ``Comparisons``).

    ``runs``: finished runs (model, n_train, seed, ``metric``; size_kind, size_value, fraction
    and run_id when present). ``predictions``/``y_test`` (run_id -> predicted test labels)
    enable McNemar. ``n_test`` (default: len(y_test)) sets the resolution of an accuracy, below
    which a spread of differences is a constant difference. ``n_boot`` and ``seed`` are kept
    for callers; the intervals are exact t intervals and need no resampling.
    """
    del n_boot, seed  # the t interval is exact: nothing is resampled
    if n_test is None and y_test is not None:
        n_test = len(y_test)
    floor = difference_floor(n_test)
    runs = _with_size_columns(runs)
    rows, by_seed = [], []
    sizes = runs.groupby(["size_kind", "size_value"], sort=True)
    for (kind, value), group in sizes:
        first = group.drop_duplicates(["seed", "model"]).set_index(["seed", "model"])
        table = first[metric].unstack("model")
        ids = first["run_id"].unstack("model") if "run_id" in group else None
        for a, b in combinations(sorted(table.columns), 2):
            pair = table[[a, b]].dropna()
            d = (pair[a] - pair[b]).to_numpy(float)
            n = len(d)
            row = {
                "size_kind": kind,
                "size_value": float(value),
                "fraction": float(group["fraction"].mean()),
                "n_train": int(group["n_train"].iloc[0]),
                "model_a": a,
                "model_b": b,
                "n_pairs": n,
                "mean_a": float(pair[a].mean()) if n else np.nan,
                "mean_b": float(pair[b].mean()) if n else np.nan,
                "diff": float(d.mean()) if n else np.nan,
            }
            notes = []
            row.update(_paired_tests(d, confidence, floor, n_test, notes))
            row["p_a_better"] = float(np.mean((d > 0) + 0.5 * (d == 0))) if n else np.nan
            per_seed = []
            if predictions is not None and y_test is not None and ids is not None:
                for s in pair.index:
                    ra, rb = ids.loc[s, a], ids.loc[s, b]
                    if ra in predictions and rb in predictions:
                        bb, cc, p = mcnemar_exact(predictions[ra] == y_test, predictions[rb] == y_test)
                        by_seed.append(
                            {
                                "size_kind": kind,
                                "size_value": float(value),
                                "n_train": row["n_train"],
                                "model_a": a,
                                "model_b": b,
                                "seed": int(s),
                                "b": bb,
                                "c": cc,
                                "p_mcnemar": p,
                            }
                        )
                        per_seed.append((bb, cc, p))
            if per_seed:
                counts = np.array(per_seed)
                row.update(
                    mcnemar_b=int(counts[:, 0].sum()),
                    mcnemar_c=int(counts[:, 1].sum()),
                    p_mcnemar=bonferroni_combined(counts[:, 2]),
                )
            else:
                row.update(mcnemar_b=np.nan, mcnemar_c=np.nan, p_mcnemar=np.nan)
                notes.append("no test predictions for McNemar")
            row["note"] = "; ".join(notes)
            rows.append(row)
    effects = np.array([r.pop("_effect") for r in rows], dtype=float)
    frame = pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)
    for test in ("t", "wilcoxon", "mcnemar"):
        frame[f"p_{test}_holm"] = holm(frame[f"p_{test}"].to_numpy(float)) if len(frame) else []
    frame["significant"] = (frame["p_t_holm"] < alpha).astype(bool)
    m = max(int(frame["p_t"].notna().sum()), 1)  # Holm's first, strictest step: alpha / m
    frame["seeds_for_power"] = [seeds_for_power(e, alpha / m) for e in effects]
    _note_too_few_seeds(frame, alpha)
    for col in ("mcnemar_b", "mcnemar_c"):
        frame[col] = frame[col].astype("Int64")
    return Comparisons(frame, pd.DataFrame(by_seed, columns=MCNEMAR_COLUMNS), alpha, n_test)


def _with_size_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with size_kind, size_value and fraction filled from n_train where a table lacks them
    (a notebook's table needs only model, n_train, seed and the metric)."""
    runs = runs.copy()
    if "size_kind" not in runs:
        runs["size_kind"] = "n_train"
    if "size_value" not in runs:
        runs["size_value"] = runs["n_train"].astype(float)
    if "fraction" not in runs:
        runs["fraction"] = runs["n_train"] / runs["n_train"].max()
    return runs


def bonferroni_combined(p_values) -> float:
    """One p-value for "some seed's pair of trained classifiers differs": the smallest of m
    p-values times m (capped at 1). Valid under any dependence, which seeds sharing one test
    set have."""
    p = np.asarray(p_values, dtype=float)
    p = p[~np.isnan(p)]
    return float(min(1.0, len(p) * p.min())) if len(p) else np.nan


def _paired_tests(d: np.ndarray, confidence: float, floor: float, n_test: int | None, notes: list[str]) -> dict:
    n = len(d)
    step = 1.0 / n_test if n_test else 0.0
    nonzero = np.abs(d) >= (step / 2 if step else 1e-12)  # at least one test image apart
    out = {
        "ci_low": np.nan,
        "ci_high": np.nan,
        "t_stat": np.nan,
        "p_t": np.nan,
        "w_stat": np.nan,
        "p_wilcoxon": np.nan,
        "n_nonzero": int(nonzero.sum()),
        "min_p_wilcoxon": min_p_wilcoxon(int(nonzero.sum())),
        "seeds_for_power": np.nan,
        "_effect": np.nan,
    }
    if n < 2:
        notes.append(f"{n} paired seed(s): no interval and no paired test (2 or more needed)")
        return out
    t = t_summary(d, confidence, floor)
    out.update(ci_low=t["ci_low"], ci_high=t["ci_high"], t_stat=t["t_stat"], p_t=t["p"])
    if t["constant"]:
        if n_test:
            k = float(np.mean(d)) * n_test
            notes.append(
                f"the difference is the same {k:+.0f} test image(s) on every seed: its spread is taken as the "
                f"rounding of an accuracy to 1/{n_test}"
            )
        else:
            notes.append("every seed gives the same difference and the test-set size is unknown: no t-test")
    if np.isfinite(t["sd"]) and t["sd"] > 0:
        out["_effect"] = t["mean"] / t["sd"]
    if nonzero.any():
        w, p = wilcoxon_signed_rank(d[nonzero], n_test)
        out.update(w_stat=w, p_wilcoxon=p)
    else:
        out.update(w_stat=0.0, p_wilcoxon=1.0)
    return out


def _note_too_few_seeds(frame: pd.DataFrame, alpha: float) -> None:
    """Say where the Wilcoxon test could never reach significance, and with how many seeds it could."""
    m = int(frame["p_wilcoxon"].notna().sum())
    if not m:
        return
    needed = seeds_needed_wilcoxon(alpha, m)
    for i in frame.index:
        if frame.at[i, "min_p_wilcoxon"] * m > alpha and frame.at[i, "n_pairs"] >= 2:
            n_pairs, n_nonzero = frame.at[i, "n_pairs"], frame.at[i, "n_nonzero"]
            seeds = f"{n_pairs} paired seeds" + (
                f" ({n_nonzero} with a non-zero difference)" if n_nonzero != n_pairs else ""
            )
            text = (
                f"with {seeds} the smallest possible Wilcoxon p is {frame.at[i, 'min_p_wilcoxon']:.3g}"
                f" ({m} comparisons, Holm): it needs {needed} seeds to be able to reach {alpha:g}"
            )
            frame.at[i, "note"] = "; ".join(x for x in (frame.at[i, "note"], text) if x)


# -- rank tests across the study --------------------------------------------------------------


@dataclass
class RankTests:
    """ranks: average rank per model (1 = best; RANK_COLUMNS): ranked within each (size, seed),
    averaged over the sizes of each seed, then over seeds. friedman: one row
    (FRIEDMAN_COLUMNS) with the Friedman test whose blocks are the seeds (the independent
    replicates; a seed's luck carries across sizes, so (size, seed) pairs are not independent
    blocks), its p from the exact permutation distribution of within-seed rank orders (Monte
    Carlo with a fixed seed when there are too many), and the Nemenyi critical difference with
    N = the number of seeds. by_size: the same test at each size alone (FRIEDMAN_BY_SIZE_COLUMNS).
    posthoc: Nemenyi's test for every pair (POSTHOC_COLUMNS)."""

    ranks: pd.DataFrame
    friedman: pd.DataFrame
    posthoc: pd.DataFrame
    by_size: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FRIEDMAN_BY_SIZE_COLUMNS))


FRIEDMAN_PERMUTATIONS = 4999


def friedman_permutation(block_ranks: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Friedman's statistic 12 N / (k (k + 1)) * sum_j (mean rank_j - (k + 1) / 2)^2 on a
    (blocks, models) array of ranks (or of ranks averaged over sizes), and its p-value from
    permuting the models within each block: exact when (k!)^N is at most
    ``FRIEDMAN_PERMUTATIONS``, else that many seeded random permutations. Valid for any number
    of blocks, where the chi-square approximation is not."""
    r = np.asarray(block_ranks, dtype=float)
    n, k = r.shape

    def statistic(*columns, axis=-1):
        means = np.mean(np.stack(columns, axis=0), axis=axis)
        return 12.0 * n / (k * (k + 1)) * np.sum((means - (k + 1) / 2) ** 2, axis=0)

    res = stats.permutation_test(
        tuple(r.T),
        statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=FRIEDMAN_PERMUTATIONS,
        alternative="greater",
        rng=np.random.default_rng(seed),
    )
    return float(res.statistic), float(res.pvalue)


def rank_tests(runs: pd.DataFrame, alpha: float = 0.05, metric: str = "test_acc") -> RankTests:
    """Average ranks, the Friedman test with seeds as blocks (overall and per size) and the
    Nemenyi post-hoc test (see ``RankTests``)."""
    runs = _with_size_columns(runs)
    cells = runs.pivot_table(
        index=["seed", "size_kind", "size_value"], columns="model", values=metric, aggfunc="first"
    ).dropna()
    models = sorted(runs["model"].unique())
    k = len(cells.columns)
    if k == 0 or len(cells) == 0:
        return RankTests(
            pd.DataFrame(columns=RANK_COLUMNS),
            pd.DataFrame(
                [
                    {
                        "n_models": len(models),
                        "n_blocks": 0,
                        "statistic": np.nan,
                        "p_value": np.nan,
                        "critical_difference": np.nan,
                        "alpha": alpha,
                        "note": "no (size, seed) in which every model finished",
                    }
                ],
                columns=FRIEDMAN_COLUMNS,
            ),
            pd.DataFrame(columns=POSTHOC_COLUMNS),
        )
    cell_ranks = pd.DataFrame(stats.rankdata(-cells.to_numpy(float), axis=1), index=cells.index, columns=cells.columns)
    blocks = cell_ranks.groupby(level="seed").mean()  # one block per seed: ranks averaged over its sizes
    n = len(blocks)
    average = blocks.mean(axis=0)
    rank_frame = (
        pd.DataFrame({"model": average.index, "average_rank": average.to_numpy(), "n_blocks": n})
        .sort_values(["average_rank", "model"])
        .reset_index(drop=True)
    )
    stat, p, note = np.nan, np.nan, ""
    if k < 3:
        note = "the Friedman test needs three or more models; see the pairwise table"
    elif n < 2:
        note = "one seed: no Friedman test (seeds are the blocks; 2 or more needed)"
    else:
        stat, p = friedman_permutation(blocks.to_numpy(float))
    se = np.sqrt(k * (k + 1) / (6.0 * n))
    q_alpha = stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2) if k >= 2 else np.nan
    friedman = pd.DataFrame(
        [
            {
                "n_models": k,
                "n_blocks": n,
                "statistic": stat,
                "p_value": p,
                "critical_difference": float(q_alpha * se),
                "alpha": alpha,
                "note": note,
            }
        ],
        columns=FRIEDMAN_COLUMNS,
    )
    post = []
    for a, b in combinations(sorted(blocks.columns), 2):
        diff = abs(average[a] - average[b])
        p_nem = float(stats.studentized_range.sf(diff / se * np.sqrt(2), k, np.inf)) if k >= 2 else np.nan
        post.append(
            {
                "model_a": a,
                "model_b": b,
                "rank_a": average[a],
                "rank_b": average[b],
                "rank_difference": diff,
                "p_nemenyi": p_nem,
                "significant": bool(p_nem < alpha),
            }
        )
    by_size = []
    for (kind, value), g in cell_ranks.groupby(level=["size_kind", "size_value"], sort=True):
        n_train = int(runs.loc[(runs["size_kind"] == kind) & (runs["size_value"] == value), "n_train"].iloc[0])
        row = {"n_train": n_train, "n_models": k, "n_blocks": len(g), "statistic": np.nan, "p_value": np.nan}
        if k < 3 or len(g) < 2:
            row["note"] = "needs three or more models and two or more seeds"
        else:
            row["statistic"], row["p_value"] = friedman_permutation(g.to_numpy(float))
            row["note"] = ""
        by_size.append(row)
    return RankTests(
        rank_frame,
        friedman,
        pd.DataFrame(post, columns=POSTHOC_COLUMNS),
        pd.DataFrame(by_size, columns=FRIEDMAN_BY_SIZE_COLUMNS),
    )
