"""Are the differences between models real? Paired comparisons per size, rank tests across the
whole study, multiple-comparison corrections and the seeds a test would need.

Runs of different models with the same seed share their training subset (a seed fixes the
nested subsets), so comparisons pair them by seed, and seeds are the replicates: intervals and
tests have S - 1 degrees of freedom, never one per (size, seed) pair or per test item. A seed's
luck carries across sizes, so rank tests use seeds as blocks (ranks averaged over sizes). All
seeds share one test set: McNemar's test (test-set noise) is run per seed and combined by
Bonferroni, which is valid under any dependence between seeds. Accuracy moves in steps of
1 / n_test, so a spread below that is a constant difference (``difference_floor``), not float
noise to divide by. Tests come from scipy; Holm's correction and the Nemenyi post-hoc test are a
few lines written here. Their calibration is measured by ``benchmarks/bench_calibration.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.inference import (
    EQUIVALENCE_MARGIN,
    EXACT_BOOTSTRAP_MAX_SEEDS,
    WILCOXON_EXACT_MAX,
    accuracy_floor,
    bootstrap_mean_ci,
    difference_floor,
    distinct_resamples,
    equivalent,
    expanded_level,
    holm,
    mcnemar_exact,
    min_p_wilcoxon,
    paired_t_power,
    seeds_for_power,
    seeds_needed_wilcoxon,
    t_summary,
    wilcoxon_signed_rank,
)

__all__ = [
    "EQUIVALENCE_MARGIN",
    "EXACT_BOOTSTRAP_MAX_SEEDS",
    "WILCOXON_EXACT_MAX",
    "accuracy_floor",
    "bootstrap_mean_ci",
    "difference_floor",
    "distinct_resamples",
    "equivalent",
    "expanded_level",
    "holm",
    "mcnemar_exact",
    "min_p_wilcoxon",
    "paired_t_power",
    "seeds_for_power",
    "seeds_needed_wilcoxon",
    "t_summary",
    "wilcoxon_signed_rank",
]  # the building blocks, re-exported

PAIRWISE_COLUMNS = [
    "size_kind",
    "size_value",
    "fraction",
    "n_train",
    "model_a",
    "model_b",
    "n_pairs",
    "mean_a",
    "mean_b",
    "diff",
    "ci_low",
    "ci_high",
    "t_stat",
    "p_t",
    "w_stat",
    "p_wilcoxon",
    "mcnemar_b",
    "mcnemar_c",
    "p_mcnemar",
    "p_a_better",
    "p_t_holm",
    "p_wilcoxon_holm",
    "p_mcnemar_holm",
    "significant",
    "n_nonzero",
    "min_p_wilcoxon",
    "seeds_for_power",
    "note",
]
MCNEMAR_COLUMNS = ["size_kind", "size_value", "n_train", "model_a", "model_b", "seed", "b", "c", "p_mcnemar"]
RANK_COLUMNS = ["model", "average_rank", "n_blocks"]
FRIEDMAN_COLUMNS = ["n_models", "n_blocks", "statistic", "p_value", "critical_difference", "alpha", "note"]
FRIEDMAN_BY_SIZE_COLUMNS = ["n_train", "n_models", "n_blocks", "statistic", "p_value", "note"]
POSTHOC_COLUMNS = ["model_a", "model_b", "rank_a", "rank_b", "rank_difference", "p_nemenyi", "significant"]


# -- pairwise comparisons ----------------------------------------------------------------------


@dataclass
class Comparisons:
    """pairwise: one row per (size, pair of models) (PAIRWISE_COLUMNS): diff = mean_a - mean_b
    over paired seeds with its Student t interval (``t_summary``: the question is "this training
    procedure on this test set", so seeds are the replicates), the paired t-test (the same
    computation, so interval and test agree), the Wilcoxon signed-rank test, McNemar's exact
    test run per seed and combined by Bonferroni over the paired seeds (p_mcnemar = min(1, S *
    smallest per-seed p): valid although the seeds share the test set; mcnemar_b / mcnemar_c
    are the discordant counts summed over seeds, for reading only), P(A > B) over paired seeds
    (ties count half), Holm-adjusted p-values (each test's family is the whole table),
    ``significant`` (Holm-adjusted paired t below alpha), n_nonzero (paired seeds whose
    difference is at least one test image), min_p_wilcoxon (the smallest p the Wilcoxon test
    could give with these seeds), seeds_for_power (paired seeds a t-test needs to detect the
    observed effect with 80% power at the Holm-adjusted level alpha / m of the first step) and a
    note when a test could not run or the difference is the same number of test images on
    every seed.
    mcnemar: McNemar's test per matched seed (MCNEMAR_COLUMNS).
    """

    pairwise: pd.DataFrame
    mcnemar: pd.DataFrame
    alpha: float
    n_test: int | None = None


def paired_comparisons(
    runs: pd.DataFrame,
    predictions: dict[int, np.ndarray] | None = None,
    y_test: np.ndarray | None = None,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    metric: str = "test_acc",
    n_test: int | None = None,
) -> Comparisons:
    """Compare every pair of models at every size, paired by seed (see ``Comparisons``).

    ``runs``: finished runs (model, n_train, seed, ``metric``; size_kind, size_value, fraction
    and run_id when present). ``predictions``/``y_test`` (run_id -> predicted test labels)
    enable McNemar. ``n_test`` (default: len(y_test)) sets the resolution of an accuracy, below
    which a spread of differences is a constant difference. ``n_boot`` and ``seed`` are kept
    for callers; the intervals are exact t intervals and need no resampling.
    """
    del n_boot, seed  # the t interval is exact: nothing is resampled
    if n_test is None and y_test is not None:
        n_test = len(y_test)
    floor = difference_floor(n_test)
    runs = _with_size_columns(runs)
    rows, by_seed = [], []
    sizes = runs.groupby(["size_kind", "size_value"], sort=True)
    for (kind, value), group in sizes:
        first = group.drop_duplicates(["seed", "model"]).set_index(["seed", "model"])
        table = first[metric].unstack("model")
        ids = first["run_id"].unstack("model") if "run_id" in group else None
        for a, b in combinations(sorted(table.columns), 2):
            pair = table[[a, b]].dropna()
            d = (pair[a] - pair[b]).to_numpy(float)
            n = len(d)
            row = {
                "size_kind": kind,
                "size_value": float(value),
                "fraction": float(group["fraction"].mean()),
                "n_train": int(group["n_train"].iloc[0]),
                "model_a": a,
                "model_b": b,
                "n_pairs": n,
                "mean_a": float(pair[a].mean()) if n else np.nan,
                "mean_b": float(pair[b].mean()) if n else np.nan,
                "diff": float(d.mean()) if n else np.nan,
            }
            notes = []
            row.update(_paired_tests(d, confidence, floor, n_test, notes))
            row["p_a_better"] = float(np.mean((d > 0) + 0.5 * (d == 0))) if n else np.nan
            per_seed = []
            if predictions is not None and y_test is not None and ids is not None:
                for s in pair.index:
                    ra, rb = ids.loc[s, a], ids.loc[s, b]
                    if ra in predictions and rb in predictions:
                        bb, cc, p = mcnemar_exact(predictions[ra] == y_test, predictions[rb] == y_test)
                        by_seed.append(
                            {
                                "size_kind": kind,
                                "size_value": float(value),
                                "n_train": row["n_train"],
                                "model_a": a,
                                "model_b": b,
                                "seed": int(s),
                                "b": bb,
                                "c": cc,
                                "p_mcnemar": p,
                            }
                        )
                        per_seed.append((bb, cc, p))
            if per_seed:
                counts = np.array(per_seed)
                row.update(
                    mcnemar_b=int(counts[:, 0].sum()),
                    mcnemar_c=int(counts[:, 1].sum()),
                    p_mcnemar=bonferroni_combined(counts[:, 2]),
                )
            else:
                row.update(mcnemar_b=np.nan, mcnemar_c=np.nan, p_mcnemar=np.nan)
                notes.append("no test predictions for McNemar")
            row["note"] = "; ".join(notes)
            rows.append(row)
    effects = np.array([r.pop("_effect") for r in rows], dtype=float)
    frame = pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)
    for test in ("t", "wilcoxon", "mcnemar"):
        frame[f"p_{test}_holm"] = holm(frame[f"p_{test}"].to_numpy(float)) if len(frame) else []
    frame["significant"] = (frame["p_t_holm"] < alpha).astype(bool)
    m = max(int(frame["p_t"].notna().sum()), 1)  # Holm's first, strictest step: alpha / m
    frame["seeds_for_power"] = [seeds_for_power(e, alpha / m) for e in effects]
    _note_too_few_seeds(frame, alpha)
    for col in ("mcnemar_b", "mcnemar_c"):
        frame[col] = frame[col].astype("Int64")
    return Comparisons(frame, pd.DataFrame(by_seed, columns=MCNEMAR_COLUMNS), alpha, n_test)


def _with_size_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with size_kind, size_value and fraction filled from n_train where a table lacks them
    (a notebook's table needs only model, n_train, seed and the metric)."""
    runs = runs.copy()
    if "size_kind" not in runs:
        runs["size_kind"] = "n_train"
    if "size_value" not in runs:
        runs["size_value"] = runs["n_train"].astype(float)
    if "fraction" not in runs:
        runs["fraction"] = runs["n_train"] / runs["n_train"].max()
    return runs


def bonferroni_combined(p_values) -> float:
    """One p-value for "some seed's pair of trained classifiers differs": the smallest of m
    p-values times m (capped at 1). Valid under any dependence, which seeds sharing one test
    set have."""
    p = np.asarray(p_values, dtype=float)
    p = p[~np.isnan(p)]
    return float(min(1.0, len(p) * p.min())) if len(p) else np.nan


def _paired_tests(d: np.ndarray, confidence: float, floor: float, n_test: int | None, notes: list[str]) -> dict:
    n = len(d)
    step = 1.0 / n_test if n_test else 0.0
    nonzero = np.abs(d) >= (step / 2 if step else 1e-12)  # at least one test image apart
    out = {
        "ci_low": np.nan,
        "ci_high": np.nan,
        "t_stat": np.nan,
        "p_t": np.nan,
        "w_stat": np.nan,
        "p_wilcoxon": np.nan,
        "n_nonzero": int(nonzero.sum()),
        "min_p_wilcoxon": min_p_wilcoxon(int(nonzero.sum())),
        "seeds_for_power": np.nan,
        "_effect": np.nan,
    }
    if n < 2:
        notes.append(f"{n} paired seed(s): no interval and no paired test (2 or more needed)")
        return out
    t = t_summary(d, confidence, floor)
    out.update(ci_low=t["ci_low"], ci_high=t["ci_high"], t_stat=t["t_stat"], p_t=t["p"])
    if t["constant"]:
        if n_test:
            k = float(np.mean(d)) * n_test
            notes.append(
                f"the difference is the same {k:+.0f} test image(s) on every seed: its spread is taken as the "
                f"rounding of an accuracy to 1/{n_test}"
            )
        else:
            notes.append("every seed gives the same difference and the test-set size is unknown: no t-test")
    if np.isfinite(t["sd"]) and t["sd"] > 0:
        out["_effect"] = t["mean"] / t["sd"]
    if nonzero.any():
        w, p = wilcoxon_signed_rank(d[nonzero], n_test)
        out.update(w_stat=w, p_wilcoxon=p)
    else:
        out.update(w_stat=0.0, p_wilcoxon=1.0)
    return out


def _note_too_few_seeds(frame: pd.DataFrame, alpha: float) -> None:
    """Say where the Wilcoxon test could never reach significance, and with how many seeds it could."""
    m = int(frame["p_wilcoxon"].notna().sum())
    if not m:
        return
    needed = seeds_needed_wilcoxon(alpha, m)
    for i in frame.index:
        if frame.at[i, "min_p_wilcoxon"] * m > alpha and frame.at[i, "n_pairs"] >= 2:
            n_pairs, n_nonzero = frame.at[i, "n_pairs"], frame.at[i, "n_nonzero"]
            seeds = f"{n_pairs} paired seeds" + (
                f" ({n_nonzero} with a non-zero difference)" if n_nonzero != n_pairs else ""
            )
            text = (
                f"with {seeds} the smallest possible Wilcoxon p is {frame.at[i, 'min_p_wilcoxon']:.3g}"
                f" ({m} comparisons, Holm): it needs {needed} seeds to be able to reach {alpha:g}"
            )
            frame.at[i, "note"] = "; ".join(x for x in (frame.at[i, "note"], text) if x)


# -- rank tests across the study --------------------------------------------------------------


@dataclass
class RankTests:
    """ranks: average rank per model (1 = best; RANK_COLUMNS): ranked within each (size, seed),
    averaged over the sizes of each seed, then over seeds. friedman: one row
    (FRIEDMAN_COLUMNS) with the Friedman test whose blocks are the seeds (the independent
    replicates; a seed's luck carries across sizes, so (size, seed) pairs are not independent
    blocks), its p from the exact permutation distribution of within-seed rank orders (Monte
    Carlo with a fixed seed when there are too many), and the Nemenyi critical difference with
    N = the number of seeds. by_size: the same test at each size alone (FRIEDMAN_BY_SIZE_COLUMNS).
    posthoc: Nemenyi's test for every pair (POSTHOC_COLUMNS)."""

    ranks: pd.DataFrame
    friedman: pd.DataFrame
    posthoc: pd.DataFrame
    by_size: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FRIEDMAN_BY_SIZE_COLUMNS))


FRIEDMAN_PERMUTATIONS = 4999


def friedman_permutation(block_ranks: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Friedman's statistic 12 N / (k (k + 1)) * sum_j (mean rank_j - (k + 1) / 2)^2 on a
    (blocks, models) array of ranks (or of ranks averaged over sizes), and its p-value from
    permuting the models within each block: exact when (k!)^N is at most
    ``FRIEDMAN_PERMUTATIONS``, else that many seeded random permutations. Valid for any number
    of blocks, where the chi-square approximation is not."""
    r = np.asarray(block_ranks, dtype=float)
    n, k = r.shape

    def statistic(*columns, axis=-1):
        means = np.mean(np.stack(columns, axis=0), axis=axis)
        return 12.0 * n / (k * (k + 1)) * np.sum((means - (k + 1) / 2) ** 2, axis=0)

    res = stats.permutation_test(
        tuple(r.T),
        statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=FRIEDMAN_PERMUTATIONS,
        alternative="greater",
        rng=np.random.default_rng(seed),
    )
    return float(res.statistic), float(res.pvalue)


def rank_tests(runs: pd.DataFrame, alpha: float = 0.05, metric: str = "test_acc") -> RankTests:
    """Average ranks, the Friedman test with seeds as blocks (overall and per size) and the
    Nemenyi post-hoc test (see ``RankTests``)."""
    runs = _with_size_columns(runs)
    cells = runs.pivot_table(
        index=["seed", "size_kind", "size_value"], columns="model", values=metric, aggfunc="first"
    ).dropna()
    models = sorted(runs["model"].unique())
    k = len(cells.columns)
    if k == 0 or len(cells) == 0:
        return RankTests(
            pd.DataFrame(columns=RANK_COLUMNS),
            pd.DataFrame(
                [
                    {
                        "n_models": len(models),
                        "n_blocks": 0,
                        "statistic": np.nan,
                        "p_value": np.nan,
                        "critical_difference": np.nan,
                        "alpha": alpha,
                        "note": "no (size, seed) in which every model finished",
                    }
                ],
                columns=FRIEDMAN_COLUMNS,
            ),
            pd.DataFrame(columns=POSTHOC_COLUMNS),
        )
    cell_ranks = pd.DataFrame(stats.rankdata(-cells.to_numpy(float), axis=1), index=cells.index, columns=cells.columns)
    blocks = cell_ranks.groupby(level="seed").mean()  # one block per seed: ranks averaged over its sizes
    n = len(blocks)
    average = blocks.mean(axis=0)
    rank_frame = (
        pd.DataFrame({"model": average.index, "average_rank": average.to_numpy(), "n_blocks": n})
        .sort_values(["average_rank", "model"])
        .reset_index(drop=True)
    )
    stat, p, note = np.nan, np.nan, ""
    if k < 3:
        note = "the Friedman test needs three or more models; see the pairwise table"
    elif n < 2:
        note = "one seed: no Friedman test (seeds are the blocks; 2 or more needed)"
    else:
        stat, p = friedman_permutation(blocks.to_numpy(float))
    se = np.sqrt(k * (k + 1) / (6.0 * n))
    q_alpha = stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2) if k >= 2 else np.nan
    friedman = pd.DataFrame(
        [
            {
                "n_models": k,
                "n_blocks": n,
                "statistic": stat,
                "p_value": p,
                "critical_difference": float(q_alpha * se),
                "alpha": alpha,
                "note": note,
            }
        ],
        columns=FRIEDMAN_COLUMNS,
    )
    post = []
    for a, b in combinations(sorted(blocks.columns), 2):
        diff = abs(average[a] - average[b])
        p_nem = float(stats.studentized_range.sf(diff / se * np.sqrt(2), k, np.inf)) if k >= 2 else np.nan
        post.append(
            {
                "model_a": a,
                "model_b": b,
                "rank_a": average[a],
                "rank_b": average[b],
                "rank_difference": diff,
                "p_nemenyi": p_nem,
                "significant": bool(p_nem < alpha),
            }
        )
    by_size = []
    for (kind, value), g in cell_ranks.groupby(level=["size_kind", "size_value"], sort=True):
        n_train = int(runs.loc[(runs["size_kind"] == kind) & (runs["size_value"] == value), "n_train"].iloc[0])
        row = {"n_train": n_train, "n_models": k, "n_blocks": len(g), "statistic": np.nan, "p_value": np.nan}
        if k < 3 or len(g) < 2:
            row["note"] = "needs three or more models and two or more seeds"
        else:
            row["statistic"], row["p_value"] = friedman_permutation(g.to_numpy(float))
            row["note"] = ""
        by_size.append(row)
    return RankTests(
        rank_frame,
        friedman,
        pd.DataFrame(post, columns=POSTHOC_COLUMNS),
        pd.DataFrame(by_size, columns=FRIEDMAN_BY_SIZE_COLUMNS),
    )
