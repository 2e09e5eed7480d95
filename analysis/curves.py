"""Learning curves: test accuracy against the number of training images, per model.

- ``summarize``: mean and confidence interval over seeds at each measured size (the data).
- ``fit_learning_curves``: parametric families fitted by least squares to every finished run;
  per model one family or an AICc-weighted average of the families that fit comparably (the
  ``select`` rule), with a prediction interval at any size (``predict``): seed noise, lack of
  fit and, beyond the measured sizes, a per-doubling term and the disagreement between two
  predictors (``analysis.bands``, calibrated on real learning curves, docs/statistics.md).
  Its ``LearningCurves`` answer is what ``analysis.efficiency`` inverts into images-needed
  estimates (from the reported point, ``Curve.images_needed``).

The families and their fitting live in ``analysis.families``; the band's terms and the point
beyond the largest measured size in ``analysis.bands``; the lack-of-fit test in
``analysis.lack_of_fit``; the check that means do not fall in ``analysis.monotonicity``. A
curve whose means fall with n beyond noise is reported as not monotone and not fitted: no family
here can describe it, and drawing one would mislead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import brentq

from analysis.bands import (
    DISAGREEMENT_SD,
    DOUBLING_DAMPING,
    EXTRAPOLATION_POINT,
    PER_DOUBLING_SD,
    band_half_width,
    damped_gain,
    jackknife_half_width,
    last_doubling_gain,
    point_beyond,
)
from analysis.families import DEFAULT_FAMILIES, FAMILIES, Family, aicc, fit_family
from analysis.lack_of_fit import LACK_OF_FIT_COLUMNS, lack_of_fit
from analysis.monotonicity import monotonicity_problem

__all__ = [
    "DEFAULT_FAMILIES",
    "DEFAULT_SELECTION",
    "DISAGREEMENT_SD",
    "DOUBLING_DAMPING",
    "EXTRAPOLATION_POINT",
    "FAMILIES",
    "PER_DOUBLING_SD",
    "SEARCH_LIMIT",
    "Curve",
    "Family",
    "LearningCurves",
    "aicc",
    "curve_bands",
    "fit_family",
    "fit_learning_curves",
    "jackknife_half_width",
    "monotonicity_problem",
    "predict",
    "summarize",
]

SUMMARY_COLUMNS = ["model", "n_train", "fraction", "n_seeds", "mean", "std", "ci_low", "ci_high"]
FIT_COLUMNS = [
    "model",
    "family",
    "formula",
    "status",
    "selected",
    "n_points",
    "n_sizes",
    "n_seeds",
    "n_scale",
    "a",
    "b",
    "c",
    "d",
    "rmse",
    "aicc",
    "lolo_error",
    "note",
]
BAND_COLUMNS = ["model", "family", "n_train", "fit", "ci_low", "ci_high", "extrapolated", "extrapolation_factor"]
PARAMETER_COLUMNS = ["model", "family", "weight", "parameter", "estimate", "ci_low", "ci_high", "n_seeds", "note"]
# Selection rules: 'average' (AICc weights over the families within MAX_DELTA_AICC of the best),
# 'aicc' (the best alone), 'extrapolation' (lowest leave-last-out error), or one family's name.
SELECTION_RULES = ("average", "aicc", "extrapolation")
DEFAULT_SELECTION = "average"
MAX_DELTA_AICC = 6.0
# Error of extrapolating, in accuracy per doubling of n beyond the largest measured size
# (analysis.bands, calibrated on real learning curves: docs/statistics.md).
EXTRAPOLATION_SD_PER_DOUBLING = PER_DOUBLING_SD


def summarize(
    runs: pd.DataFrame,
    metric: str = "test_acc",
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> pd.DataFrame:
    """Mean and confidence interval over seeds at each training-set size, per model.

    Input: finished runs (columns model, n_train, seed, ``metric``; fraction when present).
    Output columns: model, n_train, fraction, n_seeds, mean, std, ci_low, ci_high. The interval
    is Student's t over seeds (a seed fixes the subset, so seeds are the unit of replication),
    clipped to ``bounds`` (an accuracy lies in [0, 1], but two seeds' t interval easily runs
    past it); with one seed it is the point itself.
    """
    rows = []
    for (model, n_train), group in runs.groupby(["model", "n_train"], sort=True):
        values = group[metric].to_numpy(dtype=float)
        n = len(values)
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if n > 1 else 0.0
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0
        low, high = mean - half, mean + half
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        rows.append(
            {
                "model": model,
                "n_train": int(n_train),
                "fraction": float(group["fraction"].mean()) if "fraction" in group else np.nan,
                "n_seeds": n,
                "mean": mean,
                "std": std,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# -- fitting per model -----------------------------------------------------------------------


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


SEARCH_LIMIT = 1e4  # images-needed searches up to this multiple of the largest measured size


@dataclass
class LearningCurves:
    """Everything ``fit_learning_curves`` found.

    summary: ``summarize`` of the runs (SUMMARY_COLUMNS).
    fits: one row per (model, family tried) (FIT_COLUMNS): status is 'ok', 'not monotone',
        'too few sizes' or 'fit failed'; ``selected`` marks the families the model's curve uses;
        parameters a-d apply to x = n / n_scale; rmse over the runs; aicc; lolo_error is the
        absolute error at the largest size of a fit to the smaller sizes; note says why a
        model has no fit.
    parameters: asymptote and exponent of each used family with a jackknife t interval over
        seeds (PARAMETER_COLUMNS).
    lack_of_fit: per model, the measured means against the curve (LACK_OF_FIT_COLUMNS).
    curves: model -> its ``Curve`` (models with no usable fit are absent).
    seeds: the seeds of the study. points: the finished runs the fits used (model, seed,
    n_train, acc).
    """

    summary: pd.DataFrame
    fits: pd.DataFrame
    curves: dict[str, Curve]
    seeds: np.ndarray
    points: pd.DataFrame
    confidence: float = 0.95
    selection: str = DEFAULT_SELECTION
    notes: dict[str, str] = field(default_factory=dict)
    families: tuple[str, ...] = DEFAULT_FAMILIES
    parameters: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PARAMETER_COLUMNS))
    lack_of_fit: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LACK_OF_FIT_COLUMNS))


def fit_learning_curves(
    runs: pd.DataFrame,
    metric: str = "test_acc",
    families: tuple[str, ...] = DEFAULT_FAMILIES,
    select: str = DEFAULT_SELECTION,
    confidence: float = 0.95,
    extrapolation_sd: float = EXTRAPOLATION_SD_PER_DOUBLING,
    alpha: float = 0.05,
    n_test: int | None = None,
) -> LearningCurves:
    """Fit every family in ``families`` to each model's finished runs and build its curve.

    ``runs`` needs model, n_train, seed and ``metric``. ``select``: 'average' (AICc-weighted
    average of the families within MAX_DELTA_AICC of the best: the family choice is part of the
    estimate), 'aicc' (the lowest corrected AIC alone), 'extrapolation' (the lowest error
    predicting the largest size's mean from the smaller sizes; AICc where no family can be
    checked that way) or a family's name (that family alone: pass ``families=(name,)`` to fit
    nothing else). A family needs at least as many distinct sizes as parameters and one residual
    degree of freedom.

    Interval at any n (``Curve.interval``, ``predict``): point ± sqrt((t_{S-1} se_seed)^2 +
    (z misfit)^2 + (z sd_ext d)^2 + (z DISAGREEMENT_SD spread)^2), where se_seed is the
    leave-one-seed-out jackknife of the families' curve (seeds are the replicates; a seed's luck
    carries across sizes), misfit the lack of fit of the means beyond seed noise, d the doublings
    beyond the measured sizes, sd_ext = ``extrapolation_sd`` per doubling, and spread half the
    difference between the families' curve and the damped last-doubling gain (beyond n_max
    only, ``Curve.disagreement_sd``). Beyond n_max the point is ``Curve.point`` (see
    ``analysis.bands``). ``n_test``: the test set's size, whose rounding floors the seed spread in the
    lack-of-fit test (``stats.accuracy_floor``).
    """
    if select not in SELECTION_RULES and select not in FAMILIES:
        raise ValueError(f"select={select!r}; use one of {', '.join(SELECTION_RULES + tuple(FAMILIES))}")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"families={unknown}; known families are {', '.join(FAMILIES)}")
    if select in FAMILIES and select not in families:
        families = (select,)
    runs = runs[np.isfinite(runs[metric].astype(float))]
    summary = summarize(runs, metric, confidence)
    points = runs[["model", "seed", "n_train"]].assign(acc=runs[metric].astype(float)).reset_index(drop=True)
    seeds = np.array(sorted(points["seed"].unique()))
    rows, curves, notes, params, lofs = [], {}, {}, [], []
    for model, pts in points.groupby("model", sort=True):
        x_n, y = pts["n_train"].to_numpy(float), pts["acc"].to_numpy(float)
        n_scale = float(x_n.max())
        x = x_n / n_scale
        sizes = np.unique(x)
        base = {
            "model": model,
            "n_points": len(x),
            "n_sizes": len(sizes),
            "n_seeds": pts["seed"].nunique(),
            "n_scale": n_scale,
        }
        problem = monotonicity_problem(pts, alpha)
        fitted, model_rows = {}, []
        for name in families:
            fam = FAMILIES[name]
            row = {
                **base,
                "family": name,
                "formula": fam.formula,
                "selected": False,
                "rmse": np.nan,
                "aicc": np.nan,
                "lolo_error": np.nan,
                "note": "",
            }
            p = len(fam.params)
            if problem:
                row.update(status="not monotone", note=problem)
            elif len(sizes) < p or len(x) < p + 1:
                row.update(
                    status="too few sizes",
                    note=f"{len(sizes)} size(s) and {len(x)} run(s); {name} needs {p} sizes and {p + 1} runs",
                )
            else:
                theta = fit_family(fam, x, y)
                if theta is None:
                    row.update(status="fit failed", note="no finite, rising least-squares fit from any starting point")
                else:
                    rss = float(np.sum((fam(x, theta) - y) ** 2))
                    row.update(
                        status="ok",
                        rmse=np.sqrt(rss / len(x)),
                        aicc=aicc(rss, len(x), p),
                        lolo_error=_leave_last_out(fam, x, y, theta),
                    )
                    row.update(dict(zip(fam.params, theta)))
                    fitted[name] = theta
            model_rows.append(row)
        rows.extend(model_rows)
        if not fitted:
            notes[model] = problem or next((r["note"] for r in model_rows if r["note"]), "no fit")
            continue
        weights = _weights(fitted, model_rows, select)
        for r in model_rows:
            r["selected"] = r["family"] in weights
        members = {f: fitted[f] for f in weights}
        jack, jack_seeds = _jackknife(members, pts, n_scale)
        counts = pts.groupby("n_train")["seed"].nunique()
        curve = Curve(
            model,
            members,
            weights,
            jack,
            n_scale,
            float(x_n.min()),
            n_scale,
            jackknife_seeds=jack_seeds,
            seed_counts=tuple((float(k), int(v)) for k, v in counts.items()),
        )
        of_model = summary[summary["model"] == model].sort_values("n_train")
        n_par = max(len(FAMILIES[f].params) for f in curve.weights)
        fitted = curve.predict(of_model["n_train"].to_numpy(float))
        lof = {"family": curve.rule, **lack_of_fit(of_model, fitted, n_par, f"{model}: the {curve.rule} curve", n_test)}
        curve.misfit_sd = lof["misfit_sd"]
        curve.extrapolation_sd = extrapolation_sd
        curve.last_mean = float(of_model["mean"].iloc[-1])
        curve.gain_per_doubling = last_doubling_gain(
            of_model["n_train"].to_numpy(float), of_model["mean"].to_numpy(float)
        )
        curves[model] = curve
        lofs.append({"model": model, **lof})
        params.extend(_parameter_rows(curve, confidence))
    fits = pd.DataFrame(rows, columns=FIT_COLUMNS).astype({"selected": bool})
    return LearningCurves(
        summary,
        fits,
        curves,
        seeds,
        points,
        confidence,
        select,
        notes,
        tuple(families),
        pd.DataFrame(params, columns=PARAMETER_COLUMNS),
        pd.DataFrame(lofs, columns=LACK_OF_FIT_COLUMNS),
    )


def _weights(fitted: dict[str, np.ndarray], rows: list[dict], select: str) -> dict[str, float]:
    """The families a curve uses and their weights under rule ``select``; ties go to the family
    listed first, the simplest."""
    ok = [r for r in rows if r["family"] in fitted]
    if select in FAMILIES:
        chosen = [r for r in ok if r["family"] == select]
        if chosen:
            return {select: 1.0}
        select = "aicc"  # the asked family could not be fitted: the notes of the fits table say why
    if select == "extrapolation" and all(np.isfinite(r["lolo_error"]) for r in ok):
        return {min(ok, key=lambda r: (r["lolo_error"], ok.index(r)))["family"]: 1.0}
    scores = np.array([r["aicc"] if np.isfinite(r["aicc"]) else np.inf for r in ok])
    best = int(np.argmin(scores)) if np.isfinite(scores).any() else 0
    if select != "average" or not np.isfinite(scores).any():
        return {ok[best]["family"]: 1.0}
    delta = scores - scores[best]
    w = np.where(delta <= MAX_DELTA_AICC, np.exp(-delta / 2), 0.0)
    return _normalised({r["family"]: float(v) for r, v in zip(ok, w) if v > 0.01 * w.max()})


def _normalised(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {f: w / total for f, w in weights.items()}


def _jackknife(members: dict[str, np.ndarray], pts: pd.DataFrame, n_scale: float) -> tuple[list[dict], tuple]:
    """Each member family refitted with one seed left out (warm-started at the full fit); seeds
    whose removal leaves a family unfittable are left out of the jackknife."""
    seeds = sorted(pts["seed"].unique())
    if len(seeds) < 2:
        return [], ()
    out, used = [], []
    for s in seeds:
        rest = pts[pts["seed"] != s]
        x, y = rest["n_train"].to_numpy(float) / n_scale, rest["acc"].to_numpy(float)
        refit = {}
        for name, theta in members.items():
            fam = FAMILIES[name]
            if len(np.unique(x)) < len(theta) or len(x) < len(theta) + 1:
                break
            t = fit_family(fam, x, y, starts=[theta])
            if t is None:
                t = fit_family(fam, x, y)
            if t is None:
                break
            refit[name] = t
        if len(refit) == len(members):
            out.append(refit)
            used.append(s)
    return out, tuple(used)


def _parameter_rows(curve: Curve, confidence: float) -> list[dict]:
    """Asymptote and exponent of each family the curve uses, with a jackknife t interval over
    seeds (the exponent is scale-free: the same for n as for n / n_scale)."""
    out = []
    for name, theta in curve.members.items():
        fam = FAMILIES[name]
        for label, param in (("asymptote", fam.asymptote), ("exponent", fam.exponent)):
            if not param:
                continue
            i = fam.params.index(param)
            row = {"model": curve.model, "family": name, "weight": curve.weights[name], "parameter": label}
            row.update(estimate=float(theta[i]), n_seeds=len(curve.jackknife), note="")
            at_bound = min(abs(theta[i] - fam.lower[i]), abs(theta[i] - fam.upper[i])) < 1e-6 * (
                fam.upper[i] - fam.lower[i]
            )
            if at_bound:
                row.update(ci_low=np.nan, ci_high=np.nan, note=f"at the family's bound ({theta[i]:.3g}): no interval")
            elif len(curve.jackknife) >= 2:
                dev = np.array([[j[name][i] - theta[i]] for j in curve.jackknife])
                half = float(jackknife_half_width(dev, confidence)[0])
                row.update(ci_low=float(theta[i]) - half, ci_high=float(theta[i]) + half)
            else:
                row.update(ci_low=np.nan, ci_high=np.nan, note="fewer than 2 leave-one-seed-out refits: no interval")
            out.append(row)
    return out


def _leave_last_out(fam: Family, x: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> float:
    """|fit to all but the largest size, at the largest size - that size's mean|; NaN when the
    smaller sizes are too few for the family. ``start``: the fit to every size, tried first."""
    last = x == x.max()
    if len(np.unique(x[~last])) < len(fam.params) or (~last).sum() < len(fam.params) + 1:
        return np.nan
    theta = fit_family(fam, x[~last], y[~last], starts=[start]) if start is not None else None
    if theta is None:
        theta = fit_family(fam, x[~last], y[~last])
    if theta is None:
        return np.nan
    return float(abs(fam(np.array([x.max()]), theta)[0] - y[last].mean()))


def predict(curves: LearningCurves, model: str, n, confidence: float | None = None) -> pd.DataFrame:
    """The fitted accuracy of ``model`` at any training-set size(s) ``n`` with its interval
    (columns n_train, fit, ci_low, ci_high, extrapolated, extrapolation_factor): for notebooks.
    ``extrapolated`` is True for every n outside the measured sizes."""
    if model not in curves.curves:
        raise KeyError(f"model={model!r} has no fitted curve; fitted: {', '.join(sorted(curves.curves)) or 'none'}")
    curve = curves.curves[model]
    n = np.atleast_1d(np.asarray(n, dtype=float))
    fit, lo, hi = curve.interval(n, curves.confidence if confidence is None else confidence)
    factor = curve.extrapolation_factor(n)
    return pd.DataFrame(
        {
            "n_train": n,
            "fit": fit,
            "ci_low": lo,
            "ci_high": hi,
            "extrapolated": (n > curve.n_max) | (n < curve.n_min),
            "extrapolation_factor": factor,
        }
    )


def curve_bands(curves: LearningCurves, extend: float = 4.0, points: int = 120) -> pd.DataFrame:
    """The fitted curve of every model on a log grid from its smallest measured size to
    ``extend`` times its largest, with its interval (BAND_COLUMNS, see ``fit_learning_curves``);
    ``extrapolated`` marks the part beyond the largest measured size (drawn dashed)."""
    frames = []
    for model, curve in sorted(curves.curves.items()):
        grid = np.unique(np.concatenate([np.geomspace(curve.n_min, curve.n_max * extend, points), [curve.n_max]]))
        frame = predict(curves, model, grid)
        frame.insert(0, "family", curve.rule)
        frame.insert(0, "model", model)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=BAND_COLUMNS)
