"""Learning curves: test accuracy against the number of training images, per model.

- ``summarize``: mean and confidence interval over seeds at each measured size (the data).
- ``fit_learning_curves``: parametric families fitted by least squares to every finished run,
  one family chosen per model (by AICc, or by the error of extrapolating to the largest size
  from the others), with a bootstrap over seeds for confidence bands. Its ``LearningCurves``
  answer is what ``analysis.efficiency`` inverts into images-needed estimates.

Every family is written for accuracy that rises with n and is fitted on x = n / n_scale, where
n_scale is the largest measured size: parameters then have comparable magnitudes (b is the
gap below the asymptote at the largest size for pow3), which keeps the optimiser well
conditioned. A curve whose means fall with n beyond noise is reported as not monotone and not
fitted: no family here can describe it, and drawing one would mislead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import brentq, least_squares

from analysis.stats import expanded_level

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
BAND_COLUMNS = ["model", "family", "n_train", "fit", "ci_low", "ci_high", "extrapolated"]
# A drop in mean accuracy between consecutive sizes counts as real when it is larger than
# both twice its standard error and one percentage point.
DROP_TOLERANCE = 0.01


def summarize(
    runs: pd.DataFrame,
    metric: str = "test_acc",
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> pd.DataFrame:
    """Mean and confidence interval over seeds at each training-set size, per model.

    Input: finished runs (columns model, n_train, fraction, seed, ``metric``).
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
                "fraction": float(group["fraction"].mean()),
                "n_seeds": n,
                "mean": mean,
                "std": std,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# -- families ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A parametric learning-curve family acc = f(x; theta), x = n / n_scale, rising in x."""

    name: str
    formula: str
    params: tuple[str, ...]
    func: Callable[[np.ndarray, np.ndarray], np.ndarray]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    starts: Callable[[np.ndarray, np.ndarray], list[np.ndarray]]

    def __call__(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return self.func(np.asarray(x, dtype=float), np.asarray(theta, dtype=float))


def _linear_pair(basis: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (p, q) in y = p - q * basis: starting values for the two linear parameters
    of a family, given its nonlinear ones (variable projection)."""
    design = np.column_stack([np.ones_like(basis), -basis])
    (p, q), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(p), float(q)


def _pow3_starts(x, y):
    out = []
    for c in (0.1, 0.3, 0.7, 1.5):
        a, b = _linear_pair(x**-c, y)
        out.append(np.array([a, b, c]))
    return out


def _pow4_starts(x, y):
    out = []
    for c, d in product((0.3, 1.0), (0.02, 0.3)):
        a, b = _linear_pair((x + d) ** -c, y)
        out.append(np.array([a, b, c, d]))
    return out


def _exp3_starts(x, y):
    out = []
    for b in (1.0, 5.0, 20.0):
        c, a = _linear_pair(np.exp(-b * x), y)
        out.append(np.array([a, b, c]))
    return out


def _mmf4_starts(x, y):
    return [np.array([0.0, b, float(y.max()), d]) for b, d in product((0.05, 0.5), (0.7, 1.5))]


def _wbl4_starts(x, y):
    out = []
    for a, d in product((2.0, 10.0), (0.5, 1.0)):
        c, b = _linear_pair(np.exp(-a * x**d), y)
        out.append(np.array([a, b, c, d]))
    return out


# LCDB's families (Mohr & van Rijn, 2022), written for a rising accuracy.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "pow3",
            "a - b * x^(-c)",
            ("a", "b", "c"),
            lambda x, t: t[0] - t[1] * x ** -t[2],
            (0.0, 0.0, 1e-3),
            (1.0, 2.0, 5.0),
            _pow3_starts,
        ),
        Family(
            "pow4",
            "a - b * (x + d)^(-c)",
            ("a", "b", "c", "d"),
            lambda x, t: t[0] - t[1] * (x + t[3]) ** -t[2],
            (0.0, 0.0, 1e-3, 0.0),
            (1.0, 50.0, 5.0, 10.0),
            _pow4_starts,
        ),
        Family(
            "exp3",
            "c - a * exp(-b * x)",
            ("a", "b", "c"),
            lambda x, t: t[2] - t[0] * np.exp(-t[1] * x),
            (0.0, 1e-3, 0.0),
            (2.0, 1e3, 1.0),
            _exp3_starts,
        ),
        Family(
            "mmf4",
            "(a * b + c * x^d) / (b + x^d)",
            ("a", "b", "c", "d"),
            lambda x, t: (t[0] * t[1] + t[2] * x ** t[3]) / (t[1] + x ** t[3]),
            (0.0, 1e-6, 0.0, 0.05),
            (1.0, 1e3, 1.0, 5.0),
            _mmf4_starts,
        ),
        Family(
            "wbl4",
            "c - b * exp(-a * x^d)",
            ("a", "b", "c", "d"),
            lambda x, t: t[2] - t[1] * np.exp(-t[0] * x ** t[3]),
            (1e-3, 0.0, 0.0, 0.05),
            (1e3, 2.0, 1.0, 5.0),
            _wbl4_starts,
        ),
    )
}
DEFAULT_FAMILIES = ("pow3", "exp3", "pow4", "mmf4", "wbl4")  # simplest first: ties go to the first


def _monotone_and_finite(family: Family, theta: np.ndarray, x_min: float) -> bool:
    """A usable fit is finite and never falls, from well below the data to far beyond it."""
    grid = np.geomspace(x_min / 10, 1e4, 400)
    values = family(grid, theta)
    return bool(np.all(np.isfinite(values)) and np.all(np.diff(values) >= -1e-9))


def fit_family(
    family: Family, x: np.ndarray, y: np.ndarray, starts: list[np.ndarray] | None = None
) -> np.ndarray | None:
    """Least-squares parameters of ``family`` for points (x, y), from several starting points
    (the family's own, or ``starts``); the best finite, rising fit, or None."""
    lower, upper = np.array(family.lower), np.array(family.upper)
    span = upper - lower
    best, best_cost = None, np.inf
    for theta0 in starts if starts is not None else family.starts(x, y):
        theta0 = np.clip(np.where(np.isfinite(theta0), theta0, lower), lower + 1e-6 * span, upper - 1e-6 * span)
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = least_squares(lambda t: family(x, t) - y, theta0, bounds=(lower, upper), method="trf")
        except (ValueError, np.linalg.LinAlgError):
            continue
        if (
            np.all(np.isfinite(res.x))
            and np.isfinite(res.cost)
            and res.cost < best_cost
            and _monotone_and_finite(family, res.x, x.min())
        ):
            best, best_cost = res.x, res.cost
    return best


def aicc(rss: float, n_points: int, n_params: int) -> float:
    """Corrected Akaike criterion of a least-squares fit (the noise variance counts as a
    parameter); infinite where there are too few points for the correction."""
    k = n_params + 1
    if n_points - k - 1 <= 0:
        return np.inf
    return float(n_points * np.log(max(rss, 1e-12) / n_points) + 2 * k + 2 * k * (k + 1) / (n_points - k - 1))


# -- fitting per model -----------------------------------------------------------------------


@dataclass
class Curve:
    """The chosen fit of one model, and its refits on seed resamples."""

    model: str
    family: Family
    theta: np.ndarray
    n_scale: float
    n_min: float
    n_max: float
    boot: np.ndarray  # (n_boot, n_params); rows of NaN where a resample could not be fitted

    def predict(self, n: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
        """Fitted accuracy at ``n`` training images."""
        return self.family(np.asarray(n, dtype=float) / self.n_scale, self.theta if theta is None else theta)

    def predict_boot(self, n: np.ndarray) -> np.ndarray:
        """(n_boot, len(n)) fitted accuracies of the resampled fits (NaN rows where none)."""
        return np.array([self.predict(n, t) if np.all(np.isfinite(t)) else np.full(len(n), np.nan) for t in self.boot])

    def images_needed(self, target: float, theta: np.ndarray | None = None) -> float:
        """The n at which the fitted curve reaches ``target``: inf when it never does (the
        plateau lies below), 1 when even one image would."""
        theta = self.theta if theta is None else theta
        if not np.all(np.isfinite(theta)):
            return np.nan
        lo, hi = 1.0, self.n_scale * 1e4
        f = lambda log_n: float(self.predict(np.array([np.exp(log_n)]), theta)[0]) - target  # noqa: E731
        if f(np.log(hi)) < 0:
            return np.inf
        if f(np.log(lo)) >= 0:
            return lo
        return float(np.exp(brentq(f, np.log(lo), np.log(hi), xtol=1e-6)))


@dataclass
class LearningCurves:
    """Everything ``fit_learning_curves`` found.

    summary: ``summarize`` of the runs (SUMMARY_COLUMNS).
    fits: one row per (model, family tried) (FIT_COLUMNS): status is 'ok', 'not monotone',
        'too few sizes' or 'fit failed'; ``selected`` marks the family used for the model;
        parameters a-d apply to x = n / n_scale; rmse over the runs; aicc; lolo_error is the
        absolute error at the largest size of a fit to the smaller sizes; note says why a
        model has no fit.
    curves: model -> its chosen ``Curve`` (models with no usable fit are absent).
    seeds: the seeds of the study; draws: (n_boot, n_seeds) indices into ``seeds``, the seed
        resamples shared by every bootstrap (so estimates of different models stay paired);
        intervals read their percentiles at ``level``.
    points: the finished runs the fits used (model, seed, n_train, acc).
    """

    summary: pd.DataFrame
    fits: pd.DataFrame
    curves: dict[str, Curve]
    seeds: np.ndarray
    draws: np.ndarray
    points: pd.DataFrame
    confidence: float = 0.95
    selection: str = "aicc"
    notes: dict[str, str] = field(default_factory=dict)
    families: tuple[str, ...] = DEFAULT_FAMILIES

    @property
    def level(self) -> float:
        """The percentile level at which bootstrap intervals over these seeds are read (Hesterberg's
        expanded percentile interval: a plain one from a handful of seeds is too narrow)."""
        return expanded_level(self.confidence, len(self.seeds)) if len(self.seeds) > 1 else self.confidence


def monotonicity_problem(summary_of_model: pd.DataFrame) -> str:
    """'' when mean accuracy never falls between consecutive sizes by more than noise; else a
    sentence naming the largest drop."""
    s = summary_of_model.sort_values("n_train")
    mean, se = s["mean"].to_numpy(), (s["std"] / np.sqrt(s["n_seeds"])).to_numpy()
    n = s["n_train"].to_numpy()
    worst, text = 0.0, ""
    for i in range(len(s) - 1):
        drop = mean[i] - mean[i + 1]
        tolerance = max(2 * np.hypot(se[i], se[i + 1]), DROP_TOLERANCE)
        if drop > tolerance and drop > worst:
            worst = drop
            text = f"mean accuracy falls from {mean[i]:.3f} at {n[i]} images to {mean[i + 1]:.3f} at {n[i + 1]}"
    return text


def fit_learning_curves(
    runs: pd.DataFrame,
    metric: str = "test_acc",
    families: tuple[str, ...] = DEFAULT_FAMILIES,
    select: str = "aicc",
    n_boot: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
) -> LearningCurves:
    """Fit every family to each model's finished runs and choose one per model.

    ``select``: 'aicc' (lowest corrected AIC over all runs) or 'extrapolation' (lowest error
    predicting the largest size's mean from the smaller sizes; models with too few sizes for
    that fall back to AICc). A family needs at least as many distinct sizes as parameters and
    one residual degree of freedom. The bootstrap resamples whole seeds (a seed fixes the
    nested subsets, so one seed's runs are one unit) with a fixed ``seed``, and refits the
    chosen family from its point estimate; the same draws serve every model.
    """
    if select not in ("aicc", "extrapolation"):
        raise ValueError(f"select={select!r}; use 'aicc' or 'extrapolation'")
    runs = runs[np.isfinite(runs[metric].astype(float))]
    summary = summarize(runs, metric, confidence)
    points = runs[["model", "seed", "n_train"]].assign(acc=runs[metric].astype(float)).reset_index(drop=True)
    seeds = np.array(sorted(points["seed"].unique()))
    rng = np.random.default_rng(seed)
    draws = (
        rng.integers(0, len(seeds), (n_boot, len(seeds))) if len(seeds) > 1 else np.zeros((0, len(seeds)), dtype=int)
    )
    rows, curves, notes = [], {}, {}
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
        problem = monotonicity_problem(summary[summary["model"] == model])
        fitted = {}
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
                        lolo_error=_leave_last_out(fam, x, y),
                    )
                    row.update(dict(zip(fam.params, theta)))
                    fitted[name] = theta
            rows.append(row)
        if not fitted:
            notes[model] = problem or next((r["note"] for r in rows if r["model"] == model and r["note"]), "no fit")
            continue
        chosen = _choose(fitted, [r for r in rows if r["model"] == model], select)
        for r in rows:
            if r["model"] == model and r["family"] == chosen:
                r["selected"] = True
        fam = FAMILIES[chosen]
        boot = _bootstrap(fam, fitted[chosen], pts, seeds, draws, n_scale)
        curves[model] = Curve(model, fam, fitted[chosen], n_scale, float(x_n.min()), n_scale, boot)
    fits = pd.DataFrame(rows, columns=FIT_COLUMNS).astype({"selected": bool})
    return LearningCurves(summary, fits, curves, seeds, draws, points, confidence, select, notes, tuple(families))


def _leave_last_out(fam: Family, x: np.ndarray, y: np.ndarray) -> float:
    """|fit to all but the largest size, at the largest size - that size's mean|; NaN when the
    smaller sizes are too few for the family."""
    last = x == x.max()
    if len(np.unique(x[~last])) < len(fam.params) or (~last).sum() < len(fam.params) + 1:
        return np.nan
    theta = fit_family(fam, x[~last], y[~last])
    if theta is None:
        return np.nan
    return float(abs(fam(np.array([x.max()]), theta)[0] - y[last].mean()))


def _choose(fitted: dict[str, np.ndarray], rows: list[dict], select: str) -> str:
    """The family with the lowest criterion; ties (e.g. every AICc infinite) go to the family
    listed first, the simplest."""
    ok = [r for r in rows if r["family"] in fitted]
    key = "lolo_error" if select == "extrapolation" and all(np.isfinite(r["lolo_error"]) for r in ok) else "aicc"
    best = min(ok, key=lambda r: (r[key] if np.isfinite(r[key]) else np.inf, ok.index(r)))
    return best["family"]


def _bootstrap(
    fam: Family, theta: np.ndarray, pts: pd.DataFrame, seeds: np.ndarray, draws: np.ndarray, n_scale: float
) -> np.ndarray:
    """Refit ``fam`` on each seed resample of one model's runs (warm-started at ``theta``).
    Draws holding the same seeds (in any order) hold the same runs, so each distinct one is
    fitted once: with few seeds most of the draws repeat."""
    by_seed = {s: (g["n_train"].to_numpy(float) / n_scale, g["acc"].to_numpy(float)) for s, g in pts.groupby("seed")}
    empty = (np.empty(0), np.empty(0))
    out = np.full((len(draws), len(theta)), np.nan)
    fitted: dict[tuple, np.ndarray | None] = {}
    for i, draw in enumerate(draws):
        key = tuple(sorted(draw))
        if key not in fitted:
            parts = [by_seed.get(seeds[j], empty) for j in key]
            x = np.concatenate([p[0] for p in parts])
            y = np.concatenate([p[1] for p in parts])
            enough = len(np.unique(x)) >= len(theta) and len(x) >= len(theta) + 1
            fitted[key] = fit_family(fam, x, y, starts=[theta]) if enough else None
        if fitted[key] is not None:
            out[i] = fitted[key]
    return out


def percentile_interval(samples: np.ndarray, confidence: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval ignoring NaN; order statistics (no interpolation), so
    infinite samples (a target never reached) give an infinite bound instead of NaN."""
    samples = np.asarray(samples, dtype=float)
    alpha = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        lo = np.nanquantile(samples, alpha, axis=axis, method="inverted_cdf")
        hi = np.nanquantile(samples, 1 - alpha, axis=axis, method="inverted_cdf")
    return lo, hi


def curve_bands(curves: LearningCurves, extend: float = 4.0, points: int = 120) -> pd.DataFrame:
    """The fitted curve of every model on a log grid from its smallest measured size to
    ``extend`` times its largest, with the bootstrap band (BAND_COLUMNS); ``extrapolated``
    marks the part beyond the largest measured size (drawn dashed)."""
    frames = []
    for model, curve in sorted(curves.curves.items()):
        grid = np.unique(np.concatenate([np.geomspace(curve.n_min, curve.n_max * extend, points), [curve.n_max]]))
        boot = curve.predict_boot(grid)
        lo, hi = percentile_interval(boot, curves.level) if len(boot) else (np.full(len(grid), np.nan),) * 2
        frames.append(
            pd.DataFrame(
                {
                    "model": model,
                    "family": curve.family.name,
                    "n_train": grid,
                    "fit": curve.predict(grid),
                    "ci_low": lo,
                    "ci_high": hi,
                    "extrapolated": grid > curve.n_max,
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=BAND_COLUMNS)
