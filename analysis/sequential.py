"""Where the answer is least certain: the rule that decides which cells of a study get one more
seed (``--until-ci W``, docs/sequential.md), and what a finished sequential study cost.

The answer's intervals are computed by the functions the report uses: per-size mean accuracy
(``curves.summarize``, Student t over seeds), paired differences between arms at each size
(``stats.paired_comparisons``, Student t over paired seeds) and, when asked, images needed
(``efficiency.data_needed`` on ``curves.fit_learning_curves``). Every interval wider than the
target asks for one more seed: an accuracy for its cell, a difference for both arms at that size
(pairs are paired by seed, so both need the same new seed), images needed for the measured sizes
around n*. The rule looks at widths only, never at p-values: stopping when a test turns
significant would inflate its type-I error (``benchmarks/bench_sequential.py`` measures coverage
and size under this rule). Seeds of a cell are always 0..k-1, so a cell's next seed is k.

torch-free; the study side (``study/sequential.py``) and the benchmark call ``plan_next``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from analysis import group_sequential as gs
from analysis.curves import summarize
from analysis.stats import difference_floor

MORE, MET, CAP, BUDGET = "more seeds", "target width met", "seed cap", "time budget"
CELL = ["arm", "size_kind", "size_value"]
INTERVAL_COLUMNS = [
    "kind",  # 'accuracy' | 'difference' | 'needed'
    "arm",
    "other",  # the second arm of a difference; the target accuracy of images needed
    "size_kind",
    "size_value",
    "n_train",
    "n_seeds",
    "half_width",  # accuracy points / 100 (accuracy, difference); relative (needed)
    "target",  # the half-width it must reach, in the same unit
    "short",  # wider than the target
    "capped",  # short, but a cell it needs is at the seed cap
    "decided",  # a difference whose group-sequential test crossed its boundary: it asks for nothing
]
PAIR_COLUMNS = [
    "size_kind",
    "size_value",
    "n_train",
    "model_a",
    "model_b",
    "n_pairs",
    "diff",
    "level",  # the nominal two-sided level of the latest look (alpha spent over the looks)
    "p_t",  # the paired t-test's p-value at the latest look
    "decided",
    "decided_at",  # the seeds of the look that crossed the boundary (0: not decided)
    "ci_low",  # the repeated confidence interval of the latest look
    "ci_high",
]


@dataclass(frozen=True)
class Target:
    """What a sequential study aims at: ``width`` the half-width of accuracies and differences
    (accuracy as a fraction: 0.02 = 2 points), ``max_seeds`` per cell, ``budget_hours`` of
    training (0 = none), ``needed_width`` the relative half-width of images needed (0 = not a
    target), ``targets`` the accuracies of images needed (None: the report's default).
    Differences are tested group-sequentially from ``first_seeds`` (the study's initial seeds)
    to ``max_seeds`` with the ``spending`` function (``analysis.group_sequential``)."""

    width: float
    max_seeds: int = 10
    budget_hours: float = 0.0
    needed_width: float = 0.0
    confidence: float = 0.95
    targets: tuple[float, ...] | None = None
    first_seeds: int = 3
    spending: str = gs.POCOCK

    @classmethod
    def from_config(cls, config: dict) -> Target:
        """The target of a stored study config (its ``[sequential]`` table)."""
        seq = config.get("sequential") or {}
        return cls(
            width=float(seq.get("until_ci", 0.0)) / 100,
            max_seeds=int(seq.get("max_seeds", 10)),
            budget_hours=float(seq.get("budget_hours", 0.0)),
            needed_width=float(seq.get("needed_width", 0.0)),
            first_seeds=int(config.get("seeds", 3)),
        )


@dataclass
class Plan:
    """One decision: ``reason`` (MORE, or why the study stops), the runs to add as (arm, size
    kind, size value, seed), most urgent first, every interval of the answer with its width
    (INTERVAL_COLUMNS), and the training hours spent so far."""

    reason: str
    add: list[tuple[str, str, float, int]] = field(default_factory=list)
    intervals: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=INTERVAL_COLUMNS))
    spent_hours: float = 0.0

    @property
    def short(self) -> pd.DataFrame:
        """The intervals still wider than the target, widest (against it) first."""
        s = self.intervals[self.intervals["short"]]
        return s.assign(excess=s["half_width"] / s["target"]).sort_values("excess", ascending=False)


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished runs with a test accuracy, their arm in ``model`` (what the analysis compares)."""
    done = runs[(runs["status"] == "done") & runs["test_acc"].notna()]
    return done.assign(model=done["arm"]).reset_index(drop=True)


def answer_intervals(runs: pd.DataFrame, target: Target, n_test: int | None = None) -> pd.DataFrame:
    """Every interval of the answer with its half-width against the target (INTERVAL_COLUMNS;
    ``short`` set, ``capped`` not yet). ``runs``: the loader's runs (every status)."""
    done = finished(runs)
    rows = []
    # Per-size accuracy: the report's t interval, unclipped (a clipped one looks narrower than it is).
    sizes = done.drop_duplicates(["arm", "n_train"]).set_index(["arm", "n_train"])
    for _, r in summarize(done, confidence=target.confidence, bounds=None).iterrows():
        cell = sizes.loc[(r["model"], r["n_train"])]
        half = (r["ci_high"] - r["ci_low"]) / 2 if r["n_seeds"] > 1 else np.inf
        rows.append(_row("accuracy", r["model"], "", cell, r["n_train"], r["n_seeds"], half, target.width))
    decided = []
    for _, r in group_sequential_pairs(runs, target, n_test).iterrows():
        half = (r["ci_high"] - r["ci_low"]) / 2 if np.isfinite(r["ci_high"] - r["ci_low"]) else np.inf
        rows.append(_row("difference", r["model_a"], r["model_b"], r, r["n_train"], r["n_pairs"], half, target.width))
        decided.append(bool(r["decided"]))
    if target.needed_width > 0:
        rows += _needed_rows(done, target)
    frame = pd.DataFrame(rows, columns=INTERVAL_COLUMNS)
    frame["decided"] = False
    if decided:
        frame.loc[frame["kind"] == "difference", "decided"] = decided
    frame["short"] = (frame["half_width"] > frame["target"]) & ~frame["decided"]
    frame["capped"] = False
    return frame


def group_sequential_pairs(runs: pd.DataFrame, target: Target, n_test: int | None = None) -> pd.DataFrame:
    """Every pair of arms at every size, tested group-sequentially over its paired seeds in seed
    order (PAIR_COLUMNS): whether the boundary was crossed, at which look, and the repeated
    confidence interval of the latest look. ``runs``: the loader's runs (every status)."""
    done = finished(runs)
    floor = difference_floor(n_test)
    rows = []
    for (kind, value), group in done.groupby(["size_kind", "size_value"], sort=True):
        table = group.drop_duplicates(["seed", "arm"]).pivot(index="seed", columns="arm", values="test_acc")
        table = table.sort_index()
        for a, b in combinations(sorted(table.columns), 2):
            d = (table[a] - table[b]).dropna().to_numpy(float)
            t = gs.look(d, target.first_seeds, target.max_seeds, 1 - target.confidence, target.spending, floor)
            rows.append(
                {
                    "size_kind": kind,
                    "size_value": float(value),
                    "n_train": int(group["n_train"].iloc[0]),
                    "model_a": a,
                    "model_b": b,
                    "n_pairs": t["n"],
                    "diff": t["mean"],
                    "level": t["level"],
                    "p_t": t["p"],
                    "decided": t["decided"],
                    "decided_at": t["decided_at"],
                    "ci_low": t["ci_low"],
                    "ci_high": t["ci_high"],
                }
            )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _row(
    kind: str, arm: str, other: str, cell: pd.Series, n_train: int, n_seeds: int, half: float, target: float
) -> dict:
    """One row of INTERVAL_COLUMNS; ``cell`` holds the size's kind and value."""
    return {
        "kind": kind,
        "arm": arm,
        "other": other,
        "size_kind": cell["size_kind"],
        "size_value": float(cell["size_value"]),
        "n_train": int(n_train),
        "n_seeds": int(n_seeds),
        "half_width": float(half),
        "target": float(target),
    }


def _needed_rows(done: pd.DataFrame, target: Target) -> list[dict]:
    """Images needed per arm and target accuracy, as intervals on the measured sizes around n*:
    relative half-width sqrt(high / low) - 1, one row per bracketing size."""
    from analysis.curves import fit_learning_curves
    from analysis.efficiency import data_needed

    curves = fit_learning_curves(done, confidence=target.confidence)
    needed = data_needed(curves, list(target.targets) if target.targets else None)
    sizes = done.drop_duplicates(["arm", "n_train"]).sort_values("n_train")
    rows = []
    for _, r in needed.iterrows():
        if not np.isfinite(r["n_star"]):
            continue  # never reached, or beyond the search range: no size pins it down
        lo, hi = r["ci_low"], r["ci_high"]
        half = math.sqrt(hi / lo) - 1 if np.isfinite(hi) and lo > 0 else np.inf
        own = sizes[sizes["arm"] == r["model"]]
        measured = own["n_train"].to_numpy()
        below = measured[measured <= r["n_star"]]
        above = measured[measured >= r["n_star"]]
        around = {int(below.max())} if len(below) else set()
        around |= {int(above.min())} if len(above) else set()
        for n in sorted(around):
            cell = own[own["n_train"] == n].iloc[0]
            n_seeds = int(done[(done["arm"] == r["model"]) & (done["n_train"] == n)]["seed"].nunique())
            rows.append(_row("needed", r["model"], f"{r['target']:.4g}", cell, n, n_seeds, half, target.needed_width))
    return rows


def plan_next(runs: pd.DataFrame, target: Target, n_test: int | None = None) -> Plan:
    """Decide the next seeds of a study whose planned runs are all finished.

    Each interval wider than the target asks its cells for one more seed (a difference asks
    both arms at its size for the seed after the fewer they have); cells at ``max_seeds`` give
    none. Demands are taken widest against the target first; with a time budget, only those whose
    runs fit in what is left (a cell's run is estimated at its mean training time so far). The
    reason is MORE when runs are added, else MET (no interval short), BUDGET (the budget stopped
    a demand) or CAP (every short interval needs a capped cell)."""
    done = finished(runs)
    spent = float(done["train_seconds"].fillna(0).sum()) / 3600 if "train_seconds" in done else 0.0
    intervals = answer_intervals(runs, target, n_test)
    # Seeds 0..k-1 are planned (done, failed or still to run): the next is k, and a failed seed
    # counts towards the cap, so a cell whose runs keep failing cannot ask for seeds forever.
    have = runs.groupby(CELL)["seed"].max().add(1).to_dict()
    cost = done.groupby(CELL)["train_seconds"].mean().fillna(0).to_dict() if "train_seconds" in done else {}
    left = target.budget_hours * 3600 - spent * 3600 if target.budget_hours > 0 else math.inf
    order = intervals.assign(excess=intervals["half_width"] / intervals["target"])
    order = order[order["short"]].sort_values(["excess", "kind", "arm", "other", "n_train"], ascending=False)
    add: dict[tuple, int] = {}  # cell -> the seed it gets
    budget_stopped = False
    for i, r in order.iterrows():
        cells = [(r["arm"], r["size_kind"], r["size_value"])]
        if r["kind"] == "difference":
            cells.append((r["other"], r["size_kind"], r["size_value"]))
        k = min(have.get(c, 0) for c in cells)  # seeds the cells share (both, for a pair)
        wanted = [c for c in cells if have.get(c, 0) == k and c not in add]
        if k >= target.max_seeds:
            intervals.at[i, "capped"] = True
            continue
        if not wanted:
            continue  # another demand already gives these cells their next seed
        price = sum(cost.get(c, 0.0) for c in wanted)
        if price > left:
            budget_stopped = True
            continue
        left -= price
        for c in wanted:
            add[c] = k
    runs_to_add = [(arm, kind, float(value), seed) for (arm, kind, value), seed in add.items()]
    if runs_to_add:
        reason = MORE
    elif not intervals["short"].any():
        reason = MET
    elif budget_stopped or (target.budget_hours > 0 and spent >= target.budget_hours):
        reason = BUDGET
    else:
        reason = CAP
    return Plan(reason, runs_to_add, intervals, spent)


COST_COLUMNS = ["cells", "runs", "largest_seeds", "fixed_runs", "train_seconds", "fixed_train_seconds", "ratio"]


def seeds_per_cell(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished seeds per arm and size (arm, size_kind, size_value, n_train, seeds)."""
    done = finished(runs)
    return (
        done.groupby([*CELL, "n_train"])["seed"]
        .nunique()
        .rename("seeds")
        .reset_index()
        .sort_values(["n_train", "arm"])
        .reset_index(drop=True)
    )


def compute_saved(runs: pd.DataFrame) -> dict:
    """What the seeds actually run cost against a fixed grid that gives every cell the largest
    seed count any cell reached (COST_COLUMNS): the grid's training time is estimated per cell
    as its mean run time times that count (an estimate for the runs it never trained)."""
    done = finished(runs)
    per = done.groupby(CELL).agg(seeds=("seed", "nunique"), mean=("train_seconds", "mean"))
    largest = int(per["seeds"].max()) if len(per) else 0
    spent = float(done["train_seconds"].sum())
    fixed = float((per["mean"] * largest).sum())
    return {
        "cells": len(per),
        "runs": len(done),
        "largest_seeds": largest,
        "fixed_runs": largest * len(per),
        "train_seconds": spent,
        "fixed_train_seconds": fixed,
        "ratio": spent / fixed if fixed > 0 else np.nan,
    }


def interval_words(r: dict) -> str:
    """One interval of the answer in words (a row of ``Plan.intervals`` or of a decision's
    ``short``): 'the difference resnet − vit at 286 images: ±4.1 points (6 seeds)'."""
    if r["kind"] == "difference":
        what = f"the difference {r['arm']} − {r['other']}"
    elif r["kind"] == "needed":
        what = f"the images {r['arm']} needs for {100 * float(r['other']):.1f}%"
    else:
        what = f"the accuracy of {r['arm']}"
    if r["half_width"] is None:
        width = "no interval"
    elif r["kind"] == "needed":
        width = f"±{100 * r['half_width']:.0f}%"
    else:
        width = f"±{100 * r['half_width']:.1f} points"
    return f"{what} at {r['n_train']:,} images: {width} ({r['n_seeds']} seeds)"
