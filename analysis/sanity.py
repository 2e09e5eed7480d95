"""Sanity checks: results that should make a researcher stop and look before trusting the
study (chance-level or perfect accuracy, leakage, missing classes, failed or missing runs,
curves that cannot be fitted, comparisons with too few seeds)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.curves import FAMILIES, LearningCurves
from analysis.load import StudyData
from analysis.stats import Comparisons, seeds_needed_wilcoxon

WARNING_COLUMNS = ["severity", "check", "model", "n_train", "seed", "message"]
SEVERITIES = ("error", "warning", "note")  # most serious first


def chance_level(y_test: np.ndarray) -> float:
    """Accuracy of always predicting the test set's most frequent class."""
    if len(y_test) == 0:
        return np.nan
    return float(np.bincount(y_test).max() / len(y_test))


def sanity_checks(
    data: StudyData, curves: LearningCurves | None = None, comparisons: Comparisons | None = None
) -> pd.DataFrame:
    """Every warning about the study (WARNING_COLUMNS), most serious first.

    severity: 'error' (a run failed), 'warning' (a result to distrust), 'note' (a limit of
    the analysis). check names the test: failed_run, diverged_run, missing_runs,
    below_chance, perfect_accuracy, train_test_overlap, data, class_missing,
    not_monotone, fit_failed, lack_of_fit, too_few_seeds.
    """
    rows: list[dict] = []

    def add(severity: str, check: str, message: str, model: str = "", n_train=pd.NA, seed=pd.NA) -> None:
        rows.append(
            {"severity": severity, "check": check, "model": model, "n_train": n_train, "seed": seed, "message": message}
        )

    for _, r in data.failed.iterrows():
        first = (r["error"] or "no error recorded").splitlines()[0]
        check = "diverged_run" if "DivergedError" in first or "non-finite" in first else "failed_run"
        add(
            "error",
            check,
            f"{r['model']} with {r['n_train']:,} images, seed {r['seed']} failed: {first}",
            r["model"],
            r["n_train"],
            r["seed"],
        )
    unfinished = data.unfinished
    for (model, n_train), g in unfinished.groupby(["model", "n_train"], sort=True):
        add(
            "warning",
            "missing_runs",
            f"{model} with {n_train:,} images: {len(g)} planned run(s) have no result yet "
            f"(seeds {', '.join(str(s) for s in sorted(g['seed']))}; status {', '.join(sorted(g['status'].unique()))})",
            model,
            n_train,
        )

    done = data.done
    chance = chance_level(data.y_test)
    if len(done) and np.isfinite(chance):
        cells = done.groupby(["model", "n_train"], sort=True)["test_acc"]
        for (model, n_train), acc in cells:
            if acc.mean() <= chance:
                add(
                    "warning",
                    "below_chance",
                    f"{model} with {n_train:,} images: mean test accuracy {acc.mean():.3f} is at or below chance "
                    f"({chance:.3f}, always predicting the most frequent class): the model learned nothing usable",
                    model,
                    n_train,
                )
            perfect = int((acc >= 1.0).sum())
            if perfect:
                add(
                    "warning",
                    "perfect_accuracy",
                    f"{model} with {n_train:,} images: {perfect} of {len(acc)} run(s) scored 100% test accuracy; "
                    "check for leakage or a test set that is too easy",
                    model,
                    n_train,
                )

    dropped = int(data.splits.get("dropped_duplicates", 0) or 0)
    if dropped:
        add(
            "warning",
            "train_test_overlap",
            f"the content-hash check found {dropped} training/validation image(s) identical to held-out images; "
            "they were dropped before training, but the dataset holds duplicates",
        )
    for text in data.splits.get("warnings", []):
        if not (dropped and str(dropped) in text and "held-out" in text):  # said above
            add("warning", "data", text)
    n_classes = len(data.class_names)
    if n_classes and len(data.y_test):
        absent = [data.class_names[c] for c in np.flatnonzero(np.bincount(data.y_test, minlength=n_classes) == 0)]
        if absent:
            add(
                "warning",
                "class_missing",
                f"class(es) {', '.join(absent)} have no test image: their accuracy is not measured",
            )
    if n_classes:
        for n_train in sorted(data.runs["n_train"].unique()):
            if n_train < n_classes:
                add(
                    "warning",
                    "class_missing",
                    f"subsets of {n_train} images cannot hold all {n_classes} classes",
                    n_train=n_train,
                )

    if curves is not None:
        for model, note in sorted(curves.notes.items()):
            status = curves.fits.loc[curves.fits["model"] == model, "status"]
            check = "not_monotone" if (status == "not monotone").any() else "fit_failed"
            add(
                "warning" if check == "not_monotone" else "note",
                check,
                f"{model}: no learning-curve fit ({note})",
                model,
            )

    if curves is not None:
        for _, r in curves.lack_of_fit.iterrows():
            if r["warning"]:
                add("warning", "lack_of_fit", r["warning"], r["model"])
    _seeds_per_model(done, add)
    if curves is not None:
        _curves_without_interval(curves, add)
    if comparisons is not None and len(comparisons.pairwise):
        _seed_notes(comparisons, add)
    frame = pd.DataFrame(rows, columns=WARNING_COLUMNS)
    frame["order"] = frame["severity"].map(SEVERITIES.index)
    frame = frame.sort_values(["order", "check", "model"], kind="stable").drop(columns="order").reset_index(drop=True)
    for col in ("n_train", "seed"):
        frame[col] = frame[col].astype("Int64")
    return frame


# Seeds below which the report's intervals are not worth reading, and the count recommended:
# with 2 seeds a 95% Student t interval multiplies the spread by t(0.975, 1) = 12.7 and the
# curve's jackknife has one degree of freedom; from 3 seeds the calibration benchmark's
# intervals cover (docs/statistics.md), from 5 they are narrow enough to separate models.
MIN_SEEDS_FOR_INTERVALS = 3
RECOMMENDED_SEEDS = 5


def _seeds_per_model(done: pd.DataFrame, add) -> None:
    """A warning for every model with too few seeds for intervals and tests, one model or many."""
    if done.empty:
        return
    for model, g in done.groupby("model", sort=True):
        seeds = int(g.groupby("n_train")["seed"].nunique().max())
        if seeds < 2:
            add(
                "warning",
                "too_few_seeds",
                f"{model}: {seeds} seed per size: no confidence interval, no curve interval and no test is possible "
                f"(2 seeds at the very least, {MIN_SEEDS_FOR_INTERVALS} for an interval worth reading); run with "
                f"--seeds {RECOMMENDED_SEEDS} or more",
                model,
            )
        elif seeds < MIN_SEEDS_FOR_INTERVALS:
            add(
                "warning",
                "too_few_seeds",
                f"{model}: {seeds} seeds per size: every 95% interval rests on one degree of freedom (t = 12.7: "
                f"intervals about 5× as wide as with {RECOMMENDED_SEEDS} seeds) and the learning curve's interval, "
                f"where it exists, on one; {MIN_SEEDS_FOR_INTERVALS} seeds are the least for an interval worth "
                f"reading, run with --seeds {RECOMMENDED_SEEDS} or more",
                model,
            )


def _curves_without_interval(curves: LearningCurves, add) -> None:
    """A warning for every fitted curve whose leave-one-seed-out jackknife has fewer than 2
    refits: its band, images-needed intervals, ratios and crossovers have no interval."""
    for model, curve in sorted(curves.curves.items()):
        if curve.has_interval:
            continue
        pts = curves.points[curves.points["model"] == model]
        n_seeds, n_sizes = pts["seed"].nunique(), pts["n_train"].nunique()
        n_params = max(len(FAMILIES[f].params) for f in curve.weights)
        # each refit, one seed out, needs n_params + 1 runs: (S - 1) seeds x K sizes of them
        needed = max(MIN_SEEDS_FOR_INTERVALS, 1 + math.ceil((n_params + 1) / n_sizes))
        add(
            "warning",
            "too_few_seeds",
            f"{model}: too few seeds for an interval on the learning curve ({n_seeds} seed(s) at {n_sizes} sizes: "
            f"fewer than 2 leave-one-seed-out refits of {curve.rule} were possible), so its band, the images needed, "
            f"the ratios and the crossovers have no interval; {needed} seeds are needed, run with --seeds "
            f"{max(needed, RECOMMENDED_SEEDS)} or more",
            model,
        )


def _seed_notes(comparisons: Comparisons, add) -> None:
    pw = comparisons.pairwise
    alpha = comparisons.alpha
    n_pairs = int(pw["n_pairs"].max())
    if n_pairs < 2:
        return  # said per model by _seeds_per_model
    m = int(pw["p_wilcoxon"].notna().sum())
    needed = seeds_needed_wilcoxon(alpha, m)
    if n_pairs < needed:
        add(
            "note",
            "too_few_seeds",
            f"with {n_pairs} paired seeds the smallest possible two-sided Wilcoxon p is {2 / 2**n_pairs:.3g}, so "
            f"after Holm's correction over {m} comparisons it can never reach {alpha:g}; {needed} seeds would be "
            "needed "
            "(the paired t-test and McNemar's test are not limited this way)",
        )
    power = pw["seeds_for_power"].dropna()
    power = power[np.isfinite(power) & (power > n_pairs)]
    if len(power):
        add(
            "note",
            "too_few_seeds",
            f"{len(power)} of {len(pw)} comparisons would need more seeds than the {n_pairs} run to detect their "
            f"observed difference with 80% power (paired t-test at the Holm-adjusted level {alpha:g}/"
            f"{int(pw['p_t'].notna().sum())}; median {int(power.median())} seeds)",
        )
