"""Learning curves: test accuracy against the number of training images, per model.

- ``summarize``: mean and confidence interval over seeds at each measured size (the data).
- ``fit_learning_curves``: parametric families fitted by least squares to every finished run;
  per model one family or an AICc-weighted average of the families that fit comparably (the
  ``select`` rule), with a prediction interval at any size (``predict``): seed noise, lack of
  fit and, beyond the measured sizes, a per-doubling term and the disagreement between two
  predictors (``analysis.bands``, calibrated on real learning curves, docs/statistics.md).
  Its ``LearningCurves`` answer is what ``analysis.efficiency`` inverts into images-needed
  estimates (from the reported point, ``Curve.images_needed``).

The families and their fitting live in ``analysis.families``; a built curve's point, interval and
images needed in ``analysis.curve`` (``Curve``); the band's terms and the point beyond the
largest measured size in ``analysis.bands``; the lack-of-fit test in
``analysis.lack_of_fit``; the check that means do not fall in ``analysis.monotonicity``. A
curve whose means fall with n beyond noise is reported as not monotone and not fitted: no family
here can describe it, and drawing one would mislead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from analysis.bands import (
    DISAGREEMENT_SD,
    DOUBLING_DAMPING,
    EXTRAPOLATION_POINT,
    PER_DOUBLING_SD,
    jackknife_half_width,
    last_doubling_gain,
)
from analysis.curve import EXTRAPOLATION_SD_PER_DOUBLING, SEARCH_LIMIT, Curve
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
