"""The band around a learning curve, and its point beyond the largest measured size.

Inside the measured sizes the band is seed noise (leave-one-seed-out jackknife, Student t with
S_n - 1 df, S_n the seeds measured at that size), lack of fit and the spread between the averaged
families (Buckland et al. 1997: the jackknife refits each family with its weight held fixed, so
it misses that the families themselves disagree between the measured sizes; at 10 seeds the band
covered 0.93 without it; it fades out over the first doubling beyond the data). Beyond the
largest measured size n_max it adds, in quadrature:

- a per-doubling term, PER_DOUBLING_SD x log2(n / n_max) (also below the smallest size);
- a disagreement term, DISAGREEMENT_SD x the spread between the two candidate predictors (the
  families' averaged curve and the damped last-doubling gain, half their difference).

The point beyond n_max is chosen by EXTRAPOLATION_POINT: the mean of the two predictors. On
the dev curves the families' curve alone was biased low (-0.6 points) and the damped gain alone
high (+1.1); their mean had no detectable bias. The constants were calibrated on the
dev half of 150 real scikit-learn learning curves together with the calibration benchmark's
simulated shapes (``benchmarks/bench_extrapolation.py --calibrate``) and reported on the
held-out half (docs/statistics.md). The leave-last-out error
per doubling used before was divided by the last spacing of the sizes (half a doubling) and
included the last mean's noise, so it made bands 2-3x wider than the error actually seen.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

# The three constants below are the narrowest band that covers 0.90-0.97 of the 71 real dev curves
# at 2x and 4x and at least 0.94 of bench_calibration's simulated shapes (5 seeds), which flatten
# faster than real curves do (exp3, wbl4): without the disagreement term those covered 0.85 / 0.79.
# Each further doubling beyond n_max gains this fraction of the previous doubling's gain.
DOUBLING_DAMPING = 0.6
# Extrapolation error per doubling beyond the measured sizes, in accuracy (0.004 = 0.4 points).
PER_DOUBLING_SD = 0.004
# Weight of the candidate predictors' spread in the band (in standard deviations).
DISAGREEMENT_SD = 0.8
# The point beyond n_max: 'gain' (the damped last-doubling gain from the last mean), 'curve'
# (the families' averaged curve) or 'blend' (their mean).
EXTRAPOLATION_POINT = "blend"
POINT_RULES = ("gain", "curve", "blend")


def jackknife_half_width(deviations: np.ndarray, confidence: float, df=None) -> np.ndarray:
    """Student t half-width from leave-one-out deviations (S, m): jackknife variance
    (S - 1) / S * sum(dev - mean dev)^2, on ``df`` degrees of freedom (a scalar or one per
    column: the seeds measured there less one, ``Curve.seed_df``), S - 1 when None. NaN with
    fewer than 2: the seed noise is then unknown, and an interval without it would not have its
    coverage."""
    s = len(deviations)
    if s < 2:
        return np.full(deviations.shape[1] if deviations.ndim == 2 else 0, np.nan)
    centred = deviations - deviations.mean(axis=0)
    se = np.sqrt((s - 1) / s * np.sum(centred**2, axis=0))
    df = s - 1 if df is None else np.clip(np.asarray(df, float), 1, s - 1)
    return stats.t.ppf(0.5 + confidence / 2, df) * se


def last_doubling_gain(sizes: np.ndarray, means: np.ndarray) -> float:
    """Mean accuracy gained per doubling over the last doubling of the measured sizes: (mean at
    n_max - mean at the measured size nearest n_max / 2, on a log scale) / log2 of their ratio;
    0 with a single size."""
    order = np.argsort(sizes)
    sizes, means = np.asarray(sizes, float)[order], np.asarray(means, float)[order]
    if len(sizes) < 2:
        return 0.0
    i = int(np.argmin(np.abs(np.log2(sizes[:-1]) - (np.log2(sizes[-1]) - 1.0))))
    return float((means[-1] - means[i]) / np.log2(sizes[-1] / sizes[i]))


def damped_gain(last_mean: float, gain: float, doublings: np.ndarray, damping: float = DOUBLING_DAMPING) -> np.ndarray:
    """last_mean + gain x (1 + r + r^2 + ...) over ``doublings`` beyond n_max (continuous in the
    number of doublings d: gain (1 - r^d) / (1 - r), r = ``damping``), clipped to [0, 1]."""
    d = np.maximum(np.asarray(doublings, dtype=float), 0.0)
    total = gain * d if damping == 1.0 else gain * (1.0 - damping**d) / (1.0 - damping)
    return np.clip(last_mean + total, 0.0, 1.0)


def point_beyond(curve_value: np.ndarray, gain_value: np.ndarray, rule: str = EXTRAPOLATION_POINT) -> np.ndarray:
    """The point prediction beyond n_max under ``rule`` (POINT_RULES)."""
    if rule == "gain":
        return gain_value
    if rule == "curve":
        return curve_value
    if rule == "blend":
        return (curve_value + gain_value) / 2
    raise ValueError(f"rule={rule!r}; use one of {', '.join(POINT_RULES)}")


def band_half_width(
    seed_half: np.ndarray,
    misfit_sd: np.ndarray | float,
    doublings: np.ndarray,
    disagreement: np.ndarray,
    confidence: float = 0.95,
    per_doubling_sd: float = PER_DOUBLING_SD,
    disagreement_sd: float = DISAGREEMENT_SD,
    between_sd: np.ndarray | float = 0.0,
) -> np.ndarray:
    """sqrt(seed_half^2 + (z misfit)^2 + (z between)^2 + (z per_doubling_sd d)^2 + (z
    disagreement_sd disagreement)^2): ``seed_half`` the jackknife t half-width, ``between_sd``
    the weighted spread of the averaged families (``Curve.between_sd``; 0 for one family),
    ``doublings`` d = log2 of the extrapolation factor (0 inside the measured sizes),
    ``disagreement`` the spread between the candidate predictors (0 inside)."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    return np.sqrt(
        seed_half**2
        + (z * misfit_sd) ** 2
        + (z * np.asarray(between_sd)) ** 2
        + (z * per_doubling_sd * np.asarray(doublings)) ** 2
        + (z * disagreement_sd * np.asarray(disagreement)) ** 2
    )
