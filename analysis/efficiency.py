"""How many training images each model needs: the fitted learning curves inverted at target
accuracies, ratios between models, and one data-efficiency score per model.

Intervals come from the curves' intervals (``analysis.curve.Curve.interval``: seed noise,
lack of fit and extrapolation error): n*'s interval is the set of sizes where the curve's
interval contains the target (the inversion of the band, so it covers n* as often as the band
covers the curve there). A ratio's interval divides the two models' intervals at 1 - (1 - c) / 2
each (Bonferroni), so it covers at least c. Scores are averaged per seed and compared paired by
seed with Student t. Every estimate beyond the largest measured size is flagged extrapolated,
with its factor n / n_max, and so is every ratio built on one.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.bands import jackknife_half_width
from analysis.curve import SEARCH_LIMIT, Curve
from analysis.curves import LearningCurves
from analysis.stats import difference_floor, holm, t_summary

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
    "extrapolation_factor",
    "upper_bound",
    "status",
    "family",
    "plateau",
]
RATIO_COLUMNS = [
    "target",
    "model_a",
    "model_b",
    "ratio",
    "bound",
    "ci_low",
    "ci_high",
    "extrapolated",
    "extrapolation_factor",
    "sentence",
]
SCORE_COLUMNS = ["model", "score", "ci_low", "ci_high", "n_seeds", "n_sizes", "n_min", "n_max", "note"]
SCORE_DIFFERENCE_COLUMNS = [
    "model_a",
    "model_b",
    "n_pairs",
    "diff",
    "ci_low",
    "ci_high",
    "t_stat",
    "p_t",
    "p_t_holm",
    "significant",
    "note",
]
CROSSOVER_COLUMNS = ["model_a", "model_b", "n_cross", "ci_low", "ci_high", "extrapolated", "status", "sentence"]
DEFAULT_RELATIVE_TARGETS = (0.90, 0.95)
GRID_POINTS_PER_DOUBLING = 24


def targets_table(
    summary: pd.DataFrame, targets=None, relative: tuple[float, ...] = DEFAULT_RELATIVE_TARGETS
) -> pd.DataFrame:
    """The target accuracies (TARGET_COLUMNS): the user's absolute ``targets``, or by default
    ``relative`` shares of the best model's mean accuracy at the largest measured size."""
    if isinstance(targets, pd.DataFrame):
        return targets
    if targets is not None and np.ndim(targets) == 0:
        targets = [float(targets)]
    if targets is not None and len(targets):
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


def _grid(curve: Curve) -> np.ndarray:
    """A log grid from one image to SEARCH_LIMIT x n_max, GRID_POINTS_PER_DOUBLING per doubling."""
    doublings = np.log2(curve.n_scale * SEARCH_LIMIT)
    return np.geomspace(1.0, curve.n_scale * SEARCH_LIMIT, int(doublings * GRID_POINTS_PER_DOUBLING) + 1)


def _first_reaching(grid: np.ndarray, values: np.ndarray, target: float) -> float:
    """The smallest n at which ``values`` (made non-decreasing) reach ``target``, interpolated
    on log n between grid points; inf when they never do on the grid."""
    v = np.maximum.accumulate(values)
    i = int(np.searchsorted(v, target))
    if i >= len(grid):
        return np.inf
    if i == 0:
        return float(grid[0])
    f = (target - v[i - 1]) / (v[i] - v[i - 1]) if v[i] > v[i - 1] else 1.0
    return float(np.exp(np.log(grid[i - 1]) + f * (np.log(grid[i]) - np.log(grid[i - 1]))))


def needed_interval(curve: Curve, target: float, confidence: float) -> tuple[float, float]:
    """(low, high) of n*: the sizes at which the curve's interval contains ``target`` (low: where
    the upper bound reaches it; high: where the lower bound does, inf when it never does); NaN
    when the curve has no interval (too few seeds)."""
    if not curve.has_interval:
        return np.nan, np.nan
    grid = _grid(curve)
    _, lo, hi = curve.interval(grid, confidence)
    return _first_reaching(grid, hi, target), _first_reaching(grid, lo, target)


def data_needed(curves: LearningCurves, targets, confidence: float | None = None) -> pd.DataFrame:
    """n*(target): the training images at which each model's fitted curve reaches each target
    (NEEDED_COLUMNS), with the interval of ``needed_interval``.

    ``targets``: plain accuracies (a number or a list) or a ``targets_table``. Estimates below
    the smallest measured size are censored to it (``upper_bound``: the model needs at most
    that many images), because the fit says nothing about smaller sets.

    n_observed is the smallest measured size whose mean accuracy reaches the target (a check
    that needs no curve). status: 'ok'; 'extrapolated' (n* beyond the largest measured size;
    ``extrapolation_factor`` = n* / n_max); 'below measured range'; 'not reached' (the fitted
    plateau lies below the target: n* = inf); 'beyond the search range' (the plateau lies above
    the target but the curve gets there only beyond SEARCH_LIMIT x the largest size: n* = NaN);
    'no fit' (see the curve's note).
    """
    targets = targets_table(curves.summary, targets)
    confidence = curves.confidence if confidence is None else confidence
    rows = []
    for model in sorted(curves.summary["model"].unique()):
        observed = curves.summary[curves.summary["model"] == model].sort_values("n_train")
        n_max = float(observed["n_train"].max())
        curve = curves.curves.get(model)
        for target in targets["target"]:
            reached = observed[observed["mean"] >= target]
            row = {
                "model": model,
                "target": target,
                "n_observed": float(reached["n_train"].iloc[0]) if len(reached) else np.nan,
                "n_max_measured": n_max,
                "n_star": np.nan,
                "ci_low": np.nan,
                "ci_high": np.nan,
                "extrapolated": False,
                "extrapolation_factor": np.nan,
                "upper_bound": False,
                "status": "no fit",
                "family": "",
                "plateau": np.nan,
            }
            if curve is not None:
                row.update(_needed_row(curve, target, confidence))
            rows.append(row)
    return pd.DataFrame(rows, columns=NEEDED_COLUMNS)


def _needed_row(curve: Curve, target: float, confidence: float) -> dict:
    raw = curve.images_needed(target)
    lo, hi = needed_interval(curve, target, confidence)
    n_star = max(raw, curve.n_min) if np.isfinite(raw) else raw
    if np.isnan(raw):
        status = "beyond the search range"
    elif np.isinf(raw):
        status = "not reached"
    elif raw < curve.n_min:
        status = "below measured range"
    elif raw > curve.n_max:
        status = "extrapolated"
    else:
        status = "ok"
    if np.isfinite(n_star) and not np.isnan(lo):
        # the bounds are read off a grid, n* is solved exactly: keep n* inside its interval
        lo, hi = min(lo, n_star), max(hi, n_star)
    return {
        "n_star": float(n_star),
        "ci_low": float(max(lo, curve.n_min)) if not np.isnan(lo) else np.nan,
        "ci_high": float(max(hi, curve.n_min)) if not np.isnan(hi) else np.nan,
        "extrapolated": bool(np.isfinite(raw) and raw > curve.n_max),
        "extrapolation_factor": float(raw / curve.n_max) if np.isfinite(raw) else np.nan,
        "upper_bound": bool(raw < curve.n_min),
        "status": status,
        "family": curve.rule,
        "plateau": curve.plateau(),
    }


def data_ratios(curves: LearningCurves, targets, confidence: float | None = None) -> pd.DataFrame:
    """For each target and pair of fitted models: n*_A / n*_B (RATIO_COLUMNS) with an interval
    that covers at least ``confidence``: [low_A / high_B, high_A / low_B] from each model's n*
    interval at 1 - (1 - confidence) / 2 (Bonferroni: both cover together at least
    ``confidence``). The sentence reads "A needs 0.6× [0.4, 0.9] the images B needs", with
    ", extrapolated 71× beyond the data" when either n* lies beyond its largest measured size.

    ``bound`` is '>=' when only B's estimate is censored at its smallest size (the true ratio
    is at least this), '<=' when only A's is, '' when neither is; when both are, no ratio.
    """
    targets = targets_table(curves.summary, targets)
    confidence = curves.confidence if confidence is None else confidence
    each = 1 - (1 - confidence) / 2
    rows = []
    for target in targets["target"]:
        est = {m: _needed_row(c, target, each) for m, c in curves.curves.items()}
        for a, b in combinations(sorted(curves.curves), 2):
            ea, eb = est[a], est[b]
            below_a, below_b = ea["upper_bound"], eb["upper_bound"]
            bound = "" if below_a == below_b else (">=" if below_b else "<=")
            factor = np.nanmax([ea["extrapolation_factor"], eb["extrapolation_factor"], 1.0])
            extrapolated = bool(ea["extrapolated"] or eb["extrapolated"])
            row = {"target": target, "model_a": a, "model_b": b, "bound": bound}
            row.update(extrapolated=extrapolated, extrapolation_factor=float(factor))
            if below_a and below_b:
                row.update(
                    ratio=np.nan,
                    ci_low=np.nan,
                    ci_high=np.nan,
                    sentence=f"{a} and {b} both reach the target at their smallest measured size: no ratio",
                )
                rows.append(row)
                continue
            ratio = _ratio(ea["n_star"], eb["n_star"])
            with np.errstate(all="ignore"):
                lo = _ratio(ea["ci_low"], eb["ci_high"])
                hi = _ratio(ea["ci_high"], eb["ci_low"])
            if not (curves.curves[a].has_interval and curves.curves[b].has_interval):
                lo = hi = np.nan  # too few seeds for either model's interval: none for the ratio
            else:
                lo = 0.0 if np.isnan(lo) else lo
                hi = np.inf if np.isnan(hi) else hi
            row.update(ratio=ratio, ci_low=float(lo), ci_high=float(hi))
            row["sentence"] = _ratio_sentence(a, b, ratio, lo, hi, bound, factor if extrapolated else 1.0)
            rows.append(row)
    return pd.DataFrame(rows, columns=RATIO_COLUMNS)


def _ratio(a: float, b: float) -> float:
    if np.isnan(a) or np.isnan(b) or (np.isinf(a) and np.isinf(b)):
        return np.nan
    with np.errstate(divide="ignore"):
        return float(a / b)


def _fmt_ratio(v: float) -> str:
    return "∞" if np.isinf(v) else ("?" if np.isnan(v) else f"{v:.2g}")


def extrapolation_words(factor: float) -> str:
    """', extrapolated 71× beyond the data' for a factor above 1, else ''."""
    if not np.isfinite(factor) or factor <= 1.0:
        return ""
    return f", extrapolated {factor:.2g}× beyond the data"


def _ratio_sentence(a: str, b: str, ratio: float, lo: float, hi: float, bound: str = "", factor: float = 1.0) -> str:
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
    approx = "≈ " if factor > 1.0 else ""
    bracket = (
        "(no interval: too few seeds)" if np.isnan(lo) and np.isnan(hi) else f"[{_fmt_ratio(lo)}, {_fmt_ratio(hi)}]"
    )
    return (
        f"{a} needs {at}{approx}{_fmt_ratio(ratio)}× {bracket} the images {b} needs{note}{extrapolation_words(factor)}"
    )


def _seed_scores(curves: LearningCurves, model: str) -> tuple[pd.Series, np.ndarray]:
    """Each seed's data-efficiency score (seeds measured on every size of the model only)."""
    pts = curves.points[curves.points["model"] == model]
    table = pts.pivot_table(index="seed", columns="n_train", values="acc", aggfunc="mean").dropna()
    sizes = table.columns.to_numpy(float)
    if len(sizes) < 2:
        return pd.Series(dtype=float), sizes
    return pd.Series(_area(sizes, table.to_numpy(float)), index=table.index), sizes


def efficiency_scores(curves: LearningCurves) -> pd.DataFrame:
    """Data-efficiency score per model (SCORE_COLUMNS): the normalised area under the measured
    learning curve on a log-size axis, i.e. the mean accuracy averaged uniformly over
    log(n) between the smallest and the largest measured size (trapezoids on the means, no
    fitted curve). In [0, 1]; higher is better. Models measured on fewer sizes than the study
    are scored on their own range, which the note says. Interval: Student t over the seeds'
    own scores (the score of the mean curve is the mean of the seeds' scores)."""
    points = curves.points
    all_sizes = np.sort(points["n_train"].unique())
    rows = []
    for model, pts in points.groupby("model", sort=True):
        sizes = np.sort(pts["n_train"].unique())
        note = (
            ""
            if np.array_equal(sizes, all_sizes)
            else f"measured on {len(sizes)} of the study's {len(all_sizes)} sizes"
        )
        row = {"model": model, "n_sizes": len(sizes), "n_min": float(sizes.min()), "n_max": float(sizes.max())}
        per_seed, used = _seed_scores(curves, model)
        if len(sizes) < 2 or len(per_seed) == 0:
            rows.append(
                {
                    **row,
                    "score": np.nan,
                    "ci_low": np.nan,
                    "ci_high": np.nan,
                    "n_seeds": 0,
                    "note": "one size: no area" if len(sizes) < 2 else "no seed measured on every size",
                }
            )
            continue
        t = t_summary(per_seed.to_numpy(), curves.confidence)
        if len(used) < len(sizes):
            note = "; ".join(x for x in (note, "seeds missing a size are left out") if x)
        if len(per_seed) < 2:
            note = "; ".join(x for x in (note, "one seed: no interval") if x)
        rows.append(
            {
                **row,
                "score": t["mean"],
                "ci_low": t["ci_low"],
                "ci_high": t["ci_high"],
                "n_seeds": len(per_seed),
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def score_differences(curves: LearningCurves, alpha: float = 0.05, n_test: int | None = None) -> pd.DataFrame:
    """Paired difference of data-efficiency scores for every pair of models
    (SCORE_DIFFERENCE_COLUMNS): per seed, score_A - score_B on the sizes both measured; Student
    t interval and paired t-test over seeds (Holm over the table). ``n_test`` sets the
    resolution below which a spread is a constant difference (``analysis.stats.difference_floor``)."""
    rows = []
    models = sorted(curves.points["model"].unique())
    for a, b in combinations(models, 2):
        pts = curves.points[curves.points["model"].isin([a, b])]
        table = pts.pivot_table(index="seed", columns=["model", "n_train"], values="acc", aggfunc="mean")
        common = sorted(set(table[a].columns) & set(table[b].columns)) if a in table and b in table else []
        row = {"model_a": a, "model_b": b, "note": ""}
        if len(common) < 2:
            rows.append({**row, "n_pairs": 0, "diff": np.nan, "note": "fewer than two common sizes"})
            continue
        both = pd.concat([table[a][common], table[b][common]], axis=1, keys=["a", "b"]).dropna()
        sizes = np.array(common, float)
        d = _area(sizes, both["a"].to_numpy(float)) - _area(sizes, both["b"].to_numpy(float))
        t = t_summary(d, 1 - alpha, difference_floor(n_test))
        row.update(n_pairs=len(d), diff=t["mean"], ci_low=t["ci_low"], ci_high=t["ci_high"])
        row.update(t_stat=t["t_stat"], p_t=t["p"])
        if len(d) < 2:
            row["note"] = f"{len(d)} paired seed(s): no interval and no test (2 or more needed)"
        rows.append(row)
    frame = pd.DataFrame(rows, columns=SCORE_DIFFERENCE_COLUMNS)
    frame["p_t_holm"] = holm(frame["p_t"].to_numpy(float)) if len(frame) else []
    frame["significant"] = (frame["p_t_holm"] < alpha).astype(bool)
    return frame


def crossovers(curves: LearningCurves, extend: float = 4.0, confidence: float | None = None) -> pd.DataFrame:
    """Where one model's fitted curve overtakes another's (CROSSOVER_COLUMNS), searched from the
    smaller of their smallest measured sizes to ``extend`` x the larger largest size.

    n_cross: the last sign change of fit_A - fit_B on that range (after it the order holds).
    Interval: from the first to the last size where the interval of the difference contains 0; the
    difference's interval combines the paired leave-one-seed-out jackknife (same seeds left out
    of both fits), both curves' lack of fit, the spread of their averaged families and their
    extrapolation error; 0 or inf where it
    runs off the searched range. status: 'within the measured range', 'beyond the measured
    range' (extrapolated) or 'no crossover' (then ci_low / ci_high, where present, bound the
    sizes at which the curves are within each other's interval, so a crossing is not ruled out)."""
    confidence = curves.confidence if confidence is None else confidence
    z = stats.norm.ppf(0.5 + confidence / 2)
    rows = []
    for a, b in combinations(sorted(curves.curves), 2):
        ca, cb = curves.curves[a], curves.curves[b]
        lo_n, hi_n = min(ca.n_min, cb.n_min), max(ca.n_max, cb.n_max)
        grid = np.geomspace(lo_n, hi_n * extend, int(np.log2(hi_n * extend / lo_n) * GRID_POINTS_PER_DOUBLING) + 2)
        diff = ca.predict(grid) - cb.predict(grid)
        common = [s for s in ca.jackknife_seeds if s in cb.jackknife_seeds]
        ja = {s: ca.predict(grid, m) for s, m in zip(ca.jackknife_seeds, ca.jackknife)}
        jb = {s: cb.predict(grid, m) for s, m in zip(cb.jackknife_seeds, cb.jackknife)}
        dev = np.array([ja[s] - jb[s] - diff for s in common]).reshape(len(common), len(grid))
        # paired seeds at each point: the fewer of the two curves' seeds measured there
        half = jackknife_half_width(dev, confidence, np.minimum(ca.seed_df(grid), cb.seed_df(grid)))
        extra = sum(
            c.misfit_sd**2 + c.between_sd(grid) ** 2 + (c.extrapolation_sd * np.log2(c.extrapolation_factor(grid))) ** 2
            for c in (ca, cb)
        )
        half = np.sqrt(half**2 + z**2 * extra)
        sign = np.sign(diff)
        changes = np.flatnonzero(sign[:-1] * sign[1:] < 0)
        row = {"model_a": a, "model_b": b}
        covers = np.abs(diff) <= half
        no_interval = len(common) < 2  # the paired jackknife needs 2 seeds refitted in both curves
        if not len(changes):
            ahead = a if diff[-1] > 0 else b
            row.update(n_cross=np.nan, extrapolated=False, status="no crossover")
            row["sentence"] = (
                f"{a} and {b}: no crossover within the measured range or up to {extend:g}× beyond it "
                f"({ahead} ahead throughout"
            )
            if no_interval:
                row.update(ci_low=np.nan, ci_high=np.nan)
                row["sentence"] += "; no interval: too few seeds)"
            elif covers.any():  # where the curves are within each other's interval, a crossing is not ruled out
                lo_c = 0.0 if covers[0] else float(grid[covers][0])
                hi_c = np.inf if covers[-1] else float(grid[covers][-1])
                row.update(ci_low=lo_c, ci_high=hi_c)
                lo_text = "below the measured range" if lo_c == 0 else f"{lo_c:,.0f} images"
                hi_text = f"{extend:g}× beyond the measured range" if np.isinf(hi_c) else f"{hi_c:,.0f} images"
                row["sentence"] += f"; the 95% interval does not rule out a crossing from {lo_text} to {hi_text})"
            else:
                row.update(ci_low=np.nan, ci_high=np.nan)
                row["sentence"] += ", beyond the 95% interval everywhere)"
            rows.append(row)
            continue
        i = int(changes[-1])
        f = diff[i] / (diff[i] - diff[i + 1])
        n_cross = float(np.exp(np.log(grid[i]) + f * (np.log(grid[i + 1]) - np.log(grid[i]))))
        # every size where the difference's interval holds 0 could be the crossing: the interval
        # spans them all (from the first to the last), so it covers as often as the band does there
        where = np.flatnonzero(covers)
        if len(where) == 0:
            where = np.array([i, i + 1])
        ci_low = np.nan if no_interval else (0.0 if where[0] == 0 else float(grid[where[0]]))
        ci_high = np.nan if no_interval else (np.inf if where[-1] == len(grid) - 1 else float(grid[where[-1]]))
        beyond = n_cross > min(ca.n_max, cb.n_max)
        first, second = (a, b) if diff[i + 1] > 0 else (b, a)
        row.update(n_cross=n_cross, ci_low=ci_low, ci_high=ci_high, extrapolated=bool(beyond))
        row["status"] = "beyond the measured range" if beyond else "within the measured range"
        lo_text = "below the measured range" if ci_low == 0 else f"{ci_low:,.0f}"
        hi_text = f"beyond {extend:g}× the measured range" if np.isinf(ci_high) else f"{ci_high:,.0f}"
        factor = n_cross / min(ca.n_max, cb.n_max)
        bracket = "(no interval: too few seeds)" if no_interval else f"[{lo_text}, {hi_text}]"
        row["sentence"] = (
            f"{first} overtakes {second} at about {n_cross:,.0f} training images {bracket}"
            + (extrapolation_words(factor) if beyond else "")
            + (f" (the curves cross {len(changes)} times; the last crossing is shown)" if len(changes) > 1 else "")
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=CROSSOVER_COLUMNS)


def _area(sizes: np.ndarray, means: np.ndarray):
    """Normalised trapezoid area of ``means`` (last axis: sizes) over log(sizes)."""
    log_n = np.log(sizes.astype(float))
    return np.trapezoid(means, log_n, axis=-1) / (log_n[-1] - log_n[0])
