"""The building blocks of the study's statistics, on plain numbers (no DataFrames): Student t
intervals over seeds with the test set's rounding floor, an exact bootstrap for few seeds, Holm's
correction, McNemar's and Wilcoxon's exact tests, and the power of a paired t test (the seeds a
test would need). ``analysis/stats.py`` builds the study's comparisons from them; their
calibration is measured by ``benchmarks/bench_calibration.py``."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

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
