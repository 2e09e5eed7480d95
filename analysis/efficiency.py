"""How many training images each model needs: the fitted learning curves inverted at target
accuracies, ratios between models, and one data-efficiency score per model.

Confidence intervals come from the seed resamples of ``analysis.curves.fit_learning_curves``:
every model is refitted on the same resampled seeds, so the ratio of two models' estimates is
bootstrapped pairwise.
"""

from __future__ import annotations

import warnings
from itertools import combinations

import numpy as np
import pandas as pd

from analysis.curves import LearningCurves, percentile_interval

TARGET_COLUMNS = ["target", "label", "relative_to", "reference_model", "reference_accuracy"]
NEEDED_COLUMNS = [
    "model",
    "target",
    "n_star",
    "ci_low",
    "ci_high",
    "n_observed",
    "n_max_measured",
    "extrapolated",
    "upper_bound",
    "status",
    "family",
    "n_boot_valid",
]
RATIO_COLUMNS = ["target", "model_a", "model_b", "ratio", "bound", "ci_low", "ci_high", "n_boot_valid", "sentence"]
SCORE_COLUMNS = ["model", "score", "ci_low", "ci_high", "n_sizes", "n_min", "n_max", "note"]
DEFAULT_RELATIVE_TARGETS = (0.90, 0.95)
EXTRAPOLATION_LIMIT = 2.0  # estimates beyond this multiple of the largest measured size are flagged


def targets_table(
    summary: pd.DataFrame, targets: list[float] | None = None, relative: tuple[float, ...] = DEFAULT_RELATIVE_TARGETS
) -> pd.DataFrame:
    """The target accuracies (TARGET_COLUMNS): the user's absolute ``targets``, or by default
    ``relative`` shares of the best model's mean accuracy at the largest measured size."""
    if targets:
        return pd.DataFrame(
            [
                {
                    "target": float(t),
                    "label": f"{100 * t:.1f}% accuracy",
                    "relative_to": np.nan,
                    "reference_model": "",
                    "reference_accuracy": np.nan,
                }
                for t in sorted(targets)
            ],
            columns=TARGET_COLUMNS,
        )
    if summary.empty:
        return pd.DataFrame(columns=TARGET_COLUMNS)
    largest = summary[summary["n_train"] == summary["n_train"].max()]
    best = largest.sort_values(["mean", "model"], ascending=[False, True]).iloc[0]
    return pd.DataFrame(
        [
            {
                "target": share * best["mean"],
                "label": f"{100 * share:.0f}% of the best full-data accuracy ({100 * share * best['mean']:.1f}%)",
                "relative_to": share,
                "reference_model": best["model"],
                "reference_accuracy": best["mean"],
            }
            for share in relative
        ],
        columns=TARGET_COLUMNS,
    )


def _boot_needed(curves: LearningCurves, model: str, target: float) -> np.ndarray:
    """n* of every bootstrap refit, censored like ``_censored``; repeated refits (few seeds)
    are inverted once."""
    curve = curves.curves[model]
    if not len(curve.boot):
        return np.empty(0)
    unique, inverse = np.unique(curve.boot, axis=0, return_inverse=True)
    return _censored(curve, np.array([curve.images_needed(target, t) for t in unique])[inverse.ravel()])


def _censored(curve, n):
    """n* no lower than the smallest measured size: a curve extrapolated below the data says
    only that the target is reached there ("at most n_min images"), not at 1 image or 20."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(n), n, np.maximum(n, curve.n_min))


def data_needed(curves: LearningCurves, targets: pd.DataFrame) -> pd.DataFrame:
    """n*(target): the training images at which each model's fitted curve reaches each target
    (NEEDED_COLUMNS), with a percentile bootstrap interval over seeds.

    Estimates below the smallest measured size are censored to it (``upper_bound``: the model
    needs at most that many images), because the fit says nothing about smaller sets.

    n_observed is the smallest measured size whose mean accuracy reaches the target (a check
    that needs no curve). status: 'ok'; 'extrapolated' (n* beyond twice the largest measured
    size, also flagged in ``extrapolated``); 'below measured range'; 'not reached' (the fitted
    plateau lies below the target: n* = inf); 'no fit' (see the curve's note).
    """
    rows = []
    models = sorted(curves.summary["model"].unique())
    for model in models:
        observed = curves.summary[curves.summary["model"] == model].sort_values("n_train")
        n_max = float(observed["n_train"].max())
        for target in targets["target"]:
            reached = observed[observed["mean"] >= target]
            row = {
                "model": model,
                "target": target,
                "n_observed": float(reached["n_train"].iloc[0]) if len(reached) else np.nan,
                "n_max_measured": n_max,
            }
            curve = curves.curves.get(model)
            if curve is None:
                rows.append(
                    {
                        **row,
                        "n_star": np.nan,
                        "ci_low": np.nan,
                        "ci_high": np.nan,
                        "extrapolated": False,
                        "status": "no fit",
                        "family": "",
                        "n_boot_valid": 0,
                    }
                )
                continue
            raw = curve.images_needed(target)
            n_star = float(_censored(curve, raw))
            boot = _boot_needed(curves, model, target)
            lo, hi = percentile_interval(boot, curves.level) if (~np.isnan(boot)).any() else (np.nan, np.nan)
            if np.isinf(n_star):
                status = "not reached"
            elif n_star > EXTRAPOLATION_LIMIT * n_max:
                status = "extrapolated"
            elif raw < curve.n_min:
                status = "below measured range"
            else:
                status = "ok"
            rows.append(
                {
                    **row,
                    "n_star": n_star,
                    "ci_low": float(lo),
                    "ci_high": float(hi),
                    "extrapolated": bool(n_star > EXTRAPOLATION_LIMIT * n_max),
                    "upper_bound": bool(raw < curve.n_min),
                    "status": status,
                    "family": curve.family.name,
                    "n_boot_valid": int((~np.isnan(boot)).sum()),
                }
            )
    return pd.DataFrame(rows, columns=NEEDED_COLUMNS)


def data_ratios(curves: LearningCurves, targets: pd.DataFrame) -> pd.DataFrame:
    """For each target and pair of fitted models: n*_A / n*_B with a paired bootstrap interval
    (RATIO_COLUMNS), and the sentence "A needs 0.6x [0.4, 0.9] the images B needs".

    ``bound`` is '>=' when only B's estimate is censored at its smallest size (the true ratio
    is at least this), '<=' when only A's is, '' when neither is; when both are, no ratio.
    """
    rows = []
    for target in targets["target"]:
        boots = {m: _boot_needed(curves, m, target) for m in curves.curves}
        for a, b in combinations(sorted(curves.curves), 2):
            ca, cb = curves.curves[a], curves.curves[b]
            raw_a, raw_b = ca.images_needed(target), cb.images_needed(target)
            na, nb = float(_censored(ca, raw_a)), float(_censored(cb, raw_b))
            below_a, below_b = raw_a < ca.n_min, raw_b < cb.n_min
            bound = "" if below_a == below_b else (">=" if below_b else "<=")
            if below_a and below_b:
                rows.append(
                    {
                        "target": target,
                        "model_a": a,
                        "model_b": b,
                        "ratio": np.nan,
                        "bound": "",
                        "ci_low": np.nan,
                        "ci_high": np.nan,
                        "n_boot_valid": 0,
                        "sentence": f"{a} and {b} both reach the target at their smallest measured size: no ratio",
                    }
                )
                continue
            ratio = _ratio(na, nb)
            with np.errstate(all="ignore"):
                samples = np.array([_ratio(x, y) for x, y in zip(boots[a], boots[b])])
            valid = int((~np.isnan(samples)).sum())
            lo, hi = percentile_interval(samples, curves.level) if valid else (np.nan, np.nan)
            rows.append(
                {
                    "target": target,
                    "model_a": a,
                    "model_b": b,
                    "ratio": ratio,
                    "bound": bound,
                    "ci_low": float(lo),
                    "ci_high": float(hi),
                    "n_boot_valid": valid,
                    "sentence": _ratio_sentence(a, b, ratio, lo, hi, bound),
                }
            )
    return pd.DataFrame(rows, columns=RATIO_COLUMNS)


def _ratio(a: float, b: float) -> float:
    if np.isnan(a) or np.isnan(b) or (np.isinf(a) and np.isinf(b)):
        return np.nan
    with np.errstate(divide="ignore"):
        return float(a / b)


def _fmt_ratio(v: float) -> str:
    return "∞" if np.isinf(v) else ("?" if np.isnan(v) else f"{v:.2g}")


def _ratio_sentence(a: str, b: str, ratio: float, lo: float, hi: float, bound: str = "") -> str:
    if np.isnan(ratio):
        return f"{a} and {b}: no ratio (neither reaches the target on its fitted curve)"
    if np.isinf(ratio):
        return f"{a} never reaches the target on its fitted curve; {b} does"
    if ratio == 0:
        return f"{b} never reaches the target on its fitted curve; {a} does"
    at = {">=": "at least ", "<=": "at most "}.get(bound, "")
    note = {
        ">=": f" ({b} reaches it at its smallest measured size)",
        "<=": f" ({a} reaches it at its smallest measured size)",
    }.get(bound, "")
    return f"{a} needs {at}{_fmt_ratio(ratio)}× [{_fmt_ratio(lo)}, {_fmt_ratio(hi)}] the images {b} needs{note}"


def efficiency_scores(curves: LearningCurves) -> pd.DataFrame:
    """Data-efficiency score per model (SCORE_COLUMNS): the normalised area under the measured
    learning curve on a log-size axis, i.e. the mean accuracy averaged uniformly over
    log(n) between the smallest and the largest measured size (trapezoids on the means, no
    fitted curve). In [0, 1]; higher is better. Models measured on fewer sizes than the study
    are scored on their own range, which the note says. Interval: the seed bootstrap.
    """
    points, seeds, draws = curves.points, curves.seeds, curves.draws
    all_sizes = np.sort(points["n_train"].unique())
    rows = []
    for model, pts in points.groupby("model", sort=True):
        sizes = np.sort(pts["n_train"].unique())
        note = (
            ""
            if np.array_equal(sizes, all_sizes)
            else f"measured on {len(sizes)} of the study's {len(all_sizes)} sizes"
        )
        if len(sizes) < 2:
            rows.append(
                {
                    "model": model,
                    "score": np.nan,
                    "ci_low": np.nan,
                    "ci_high": np.nan,
                    "n_sizes": len(sizes),
                    "n_min": float(sizes.min()),
                    "n_max": float(sizes.max()),
                    "note": "one size: no area",
                }
            )
            continue
        # (seed, size) table of accuracies, so that a resample's means are one weighted average
        table = pts.pivot_table(index="seed", columns="n_train", values="acc", aggfunc="mean").reindex(
            index=seeds, columns=sizes
        )
        score = float(_area(sizes, table.mean(axis=0).to_numpy()))
        with warnings.catch_warnings():  # a size none of a draw's seeds has gives NaN: no score
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(table.to_numpy()[draws], axis=1)  # (n_boot, n_sizes)
        boot = _area(sizes, means)
        lo, hi = percentile_interval(boot, curves.level) if len(draws) else (np.nan, np.nan)
        rows.append(
            {
                "model": model,
                "score": score,
                "ci_low": float(lo),
                "ci_high": float(hi),
                "n_sizes": len(sizes),
                "n_min": float(sizes.min()),
                "n_max": float(sizes.max()),
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _area(sizes: np.ndarray, means: np.ndarray):
    """Normalised trapezoid area of ``means`` (last axis: sizes) over log(sizes)."""
    log_n = np.log(sizes.astype(float))
    return np.trapezoid(means, log_n, axis=-1) / (log_n[-1] - log_n[0])
