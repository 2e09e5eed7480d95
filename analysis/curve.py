"""One model's fitted learning curve (``Curve``): its accuracy at any training-set size, the
interval about it, and the size at which it reaches a target. ``analysis.curves`` fits the
families, weighs them and builds it; this module only reads a built curve (the band's terms are
``analysis.bands``'s)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from analysis.bands import (
    DISAGREEMENT_SD,
    EXTRAPOLATION_POINT,
    PER_DOUBLING_SD,
    band_half_width,
    damped_gain,
    jackknife_half_width,
    point_beyond,
)
from analysis.families import FAMILIES, Family

# Error of extrapolating, in accuracy per doubling of n beyond the largest measured size
# (analysis.bands, calibrated on real learning curves: docs/statistics.md).
EXTRAPOLATION_SD_PER_DOUBLING = PER_DOUBLING_SD
SEARCH_LIMIT = 1e4  # images-needed searches up to this multiple of the largest measured size


@dataclass
class Curve:
    """One model's fitted curve: the families it uses (one, or several averaged with AICc
    weights), their refits with each seed left out, and the error terms of its interval."""

    model: str
    members: dict[str, np.ndarray]  # family name -> parameters on every run
    weights: dict[str, float]  # family name -> weight (summing to 1)
    jackknife: list[dict[str, np.ndarray]]  # per left-out seed: family name -> refitted parameters
    n_scale: float
    n_min: float
    n_max: float
    misfit_sd: float = 0.0  # spread of the measured means about the curve beyond seed noise
    extrapolation_sd: float = EXTRAPOLATION_SD_PER_DOUBLING  # per doubling beyond the measured sizes
    jackknife_seeds: tuple = ()
    # (n_train, seeds measured there) per measured size: under sequential seeds the counts differ
    seed_counts: tuple = ()
    last_mean: float = np.nan  # mean accuracy at n_max (NaN: extrapolate with the curve alone)
    gain_per_doubling: float = 0.0  # mean accuracy gained over the last doubling of the sizes
    point_rule: str = EXTRAPOLATION_POINT  # the point beyond n_max (analysis.bands.POINT_RULES)
    disagreement_weight: float = DISAGREEMENT_SD

    @property
    def family(self) -> Family:
        """The family with the largest weight."""
        return FAMILIES[max(self.weights, key=lambda f: (self.weights[f], -list(self.weights).index(f)))]

    @property
    def theta(self) -> np.ndarray:
        return self.members[self.family.name]

    @property
    def rule(self) -> str:
        """'pow4', or 'average of pow4 0.62, mmf4 0.38'."""
        if len(self.weights) == 1:
            return next(iter(self.weights))
        return "average of " + ", ".join(f"{f} {w:.2f}" for f, w in sorted(self.weights.items(), key=lambda x: -x[1]))

    def predict(self, n, members: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Fitted accuracy at ``n`` training images (the weighted average of the members)."""
        x = np.atleast_1d(np.asarray(n, dtype=float)) / self.n_scale
        members = self.members if members is None else members
        return sum(w * FAMILIES[f](x, members[f]) for f, w in self.weights.items())

    @property
    def has_interval(self) -> bool:
        """Whether the seed-noise term exists: the jackknife needs two leave-one-seed-out refits
        (with 1 seed, or with so few runs per seed that removing one leaves the family unfittable,
        there are fewer and the curve has no interval)."""
        return len(self.jackknife) >= 2

    def jackknife_predictions(self, n) -> np.ndarray:
        """(n_seeds_left_out, len(n)) predictions of the leave-one-seed-out refits (0 rows when
        no refit was possible)."""
        n = np.atleast_1d(np.asarray(n, dtype=float))
        return np.array([self.predict(n, m) for m in self.jackknife]).reshape(len(self.jackknife), len(n))

    def seed_df(self, n) -> np.ndarray:
        """Student t degrees of freedom of the seed term at ``n``: the seeds measured at the
        nearest measured size (on a log scale) less one, at most the jackknife's S - 1. Under
        sequential seeds (``--until-ci``) sizes carry different seed counts, and a size measured
        with 3 seeds has the uncertainty of 3 seeds however many other sizes have."""
        n = np.atleast_1d(np.asarray(n, dtype=float))
        whole = max(len(self.jackknife) - 1, 1)
        if not self.seed_counts:
            return np.full(len(n), whole)
        sizes = np.array([c[0] for c in self.seed_counts], float)
        counts = np.array([c[1] for c in self.seed_counts], int)
        nearest = np.abs(np.log(n)[:, None] - np.log(sizes)[None, :]).argmin(axis=1)
        return np.clip(counts[nearest] - 1, 1, whole)

    def extrapolation_factor(self, n) -> np.ndarray:
        """n / n_max beyond the largest measured size, n_min / n below the smallest, else 1."""
        n = np.atleast_1d(np.asarray(n, dtype=float))
        return np.maximum(np.maximum(n / self.n_max, self.n_min / n), 1.0)

    def _candidates(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(families' curve, damped last-doubling gain) at ``n``; the gain equals the curve at and
        below n_max, and wherever the last mean is unknown."""
        curve = self.predict(n)
        if not np.isfinite(self.last_mean):
            return curve, curve
        beyond = n > self.n_max
        gain = damped_gain(self.last_mean, self.gain_per_doubling, np.log2(np.maximum(n / self.n_max, 1.0)))
        return curve, np.where(beyond, gain, curve)

    def point(self, n) -> np.ndarray:
        """The reported accuracy at ``n``: the curve within the measured sizes; beyond n_max the
        prediction chosen by ``point_rule`` (analysis.bands.point_beyond)."""
        n = np.atleast_1d(np.asarray(n, dtype=float))
        curve, gain = self._candidates(n)
        return np.where(n > self.n_max, point_beyond(curve, gain, self.point_rule), curve)

    def between_sd(self, n) -> np.ndarray:
        """Weighted spread of the member families about their average, sqrt(sum_f w_f (f(n) -
        avg(n))^2) (Buckland et al. 1997's between-model term); 0 for a single family. Outside the
        measured sizes it is the spread at the nearest one, fading linearly to 0 over the first
        doubling: beyond that the calibrated extrapolation terms carry the families' uncertainty
        (they were calibrated without it; kept at its n_max value, it made the real dev curves'
        band cover 0.986 at 2x)."""
        n = np.atleast_1d(np.asarray(n, dtype=float))
        x = np.clip(n, self.n_min, self.n_max)
        avg = self.predict(x)
        spread = sum(w * (FAMILIES[f](x / self.n_scale, self.members[f]) - avg) ** 2 for f, w in self.weights.items())
        return np.sqrt(spread) * np.clip(1.0 - np.log2(self.extrapolation_factor(n)), 0.0, 1.0)

    def disagreement_sd(self, n) -> np.ndarray:
        """Spread between the candidate predictors at ``n`` (half the difference between the
        families' curve and the damped gain); 0 within the measured sizes."""
        n = np.atleast_1d(np.asarray(n, dtype=float))
        curve, gain = self._candidates(n)
        return np.abs(curve - gain) / 2

    def interval(self, n, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(point, low, high) at ``n``: see ``fit_learning_curves``; low and high are NaN when the
        curve has no interval (``has_interval``)."""
        n = np.atleast_1d(np.asarray(n, dtype=float))
        # the two candidates once: point() and disagreement_sd() would each refit the families' curve
        curve, gain = self._candidates(n)
        fit = np.where(n > self.n_max, point_beyond(curve, gain, self.point_rule), curve)
        seed = jackknife_half_width(curve - self.jackknife_predictions(n), confidence, self.seed_df(n))
        doublings = np.log2(self.extrapolation_factor(n))
        half = band_half_width(
            seed,
            self.misfit_sd,
            doublings,
            np.abs(curve - gain) / 2,
            confidence,
            self.extrapolation_sd,
            self.disagreement_weight,
            self.between_sd(n),
        )
        return fit, np.clip(fit - half, 0.0, 1.0), np.clip(fit + half, 0.0, 1.0)

    def plateau(self) -> float:
        """The accuracy the curve approaches as n grows without bound (read at 1e9 x n_max)."""
        return float(self.predict(np.array([self.n_scale * 1e9]))[0])

    def images_needed(self, target: float) -> float:
        """The n at which the reported accuracy (``point``: the families' curve within the
        measured sizes, beyond them the same point as the band's) reaches ``target``: inf when it
        never does (its limit lies below), NaN when it does only beyond SEARCH_LIMIT x n_max, 1
        when even one image would. Reading the families' curve alone beyond n_max, as before,
        could put n* outside its own interval, which is built around the point."""
        lo, hi = 1.0, self.n_scale * SEARCH_LIMIT
        f = lambda log_n: float(self.point(np.array([np.exp(log_n)]))[0]) - target  # noqa: E731
        if f(np.log(hi)) < 0:
            far = float(self.point(np.array([self.n_scale * 1e9]))[0])
            return np.inf if far < target else np.nan
        if f(np.log(lo)) >= 0:
            return lo
        return float(np.exp(brentq(f, np.log(lo), np.log(hi), xtol=1e-6)))
