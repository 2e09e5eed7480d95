"""Are the differences between models real? Paired comparisons per size, rank tests across the
whole study, multiple-comparison corrections and the seeds a test would need.

Runs of different models with the same seed share their training subset (a seed fixes the
nested subsets), so comparisons pair them by seed. Tests come from scipy; Holm's correction
and the Nemenyi post-hoc test are a few lines written here (scipy has neither, and
statsmodels would be a large dependency for them).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

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
POSTHOC_COLUMNS = ["model_a", "model_b", "rank_a", "rank_b", "rank_difference", "p_nemenyi", "significant"]


# -- building blocks ---------------------------------------------------------------------------


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values; NaN entries stay NaN and do not
    count towards the family size."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired per-item correctness: (b, c, two-sided p), where b counts
    items A got right and B wrong, c the reverse; p is the exact binomial test of b against
    b + c trials with probability 1/2 (1 when there is no discordant item)."""
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return b, c, p


def min_p_wilcoxon(n_pairs: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with
    ``n_pairs`` non-zero differences: 2 / 2^n (every difference of the same sign)."""
    return float(min(1.0, 2.0 / 2.0**n_pairs)) if n_pairs > 0 else 1.0


def seeds_needed_wilcoxon(alpha: float = 0.05, n_comparisons: int = 1) -> int:
    """The fewest paired seeds with which the exact Wilcoxon test can reach ``alpha`` at all,
    after a Holm (worst-case Bonferroni) correction over ``n_comparisons``."""
    n = 1
    while min_p_wilcoxon(n) > alpha / max(n_comparisons, 1):
        n += 1
    return n


def paired_t_power(effect_size: float, n_pairs: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with ``n_pairs`` pairs against a true standardised
    mean difference ``effect_size`` (mean / sd of the differences), from the noncentral t."""
    if n_pairs < 2:
        return 0.0
    df = n_pairs - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(effect_size) * np.sqrt(n_pairs)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_for_power(effect_size: float, alpha: float = 0.05, power: float = 0.8, limit: int = 1000) -> float:
    """The fewest paired seeds for which a paired t-test detects ``effect_size`` with ``power``;
    NaN when the effect is zero or undefined, inf beyond ``limit``."""
    if not np.isfinite(effect_size) or effect_size == 0:
        return np.nan
    for n in range(2, limit + 1):
        if paired_t_power(effect_size, n, alpha) >= power:
            return float(n)
    return np.inf


def expanded_level(confidence: float, n: int) -> float:
    """The confidence level at which to read percentiles so that a bootstrap interval of a mean
    of ``n`` values covers at about ``confidence``: Hesterberg's (2015) expanded percentile
    interval, which widens by sqrt(n / (n - 1)) and swaps z for Student's t. Plain percentile
    and BCa intervals of a mean from 5-15 seeds cover only 82-89% at a nominal 95%."""
    alpha = 1 - confidence
    return float(1 - 2 * stats.norm.sf(np.sqrt(n / (n - 1)) * stats.t.ppf(1 - alpha / 2, n - 1)))


def bootstrap_mean_ci(
    values: np.ndarray, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap interval of the mean of ``values``: percentiles of ``n_boot`` seeded resample
    means (scipy.stats.bootstrap) read at the expanded level (``expanded_level``). The point
    itself when all values are equal; NaN with fewer than two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return np.nan, np.nan
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    res = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=n_boot,
        confidence_level=expanded_level(confidence, len(values)),
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


# -- pairwise comparisons ----------------------------------------------------------------------


@dataclass
class Comparisons:
    """pairwise: one row per (size, pair of models) (PAIRWISE_COLUMNS): diff = mean_a - mean_b
    over paired seeds, its bootstrap CI (``bootstrap_mean_ci``), the paired t-test, the Wilcoxon signed-rank test,
    McNemar's exact test on the test predictions pooled over the paired seeds (b: A right and B
    wrong), P(A > B) over paired seeds (ties count half), Holm-adjusted p-values (each test's
    family is the whole table), ``significant`` (Holm-adjusted paired t below alpha),
    n_nonzero (paired seeds with a non-zero difference: the Wilcoxon test drops the others),
    min_p_wilcoxon (the smallest p the Wilcoxon test could give with these seeds),
    seeds_for_power (paired seeds a t-test needs to detect the observed effect with 80% power)
    and a note when a test could not run.
    mcnemar: McNemar's test per matched seed (MCNEMAR_COLUMNS).
    """

    pairwise: pd.DataFrame
    mcnemar: pd.DataFrame
    alpha: float


def paired_comparisons(
    runs: pd.DataFrame,
    predictions: dict[int, np.ndarray] | None = None,
    y_test: np.ndarray | None = None,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    metric: str = "test_acc",
) -> Comparisons:
    """Compare every pair of models at every size, paired by seed (see ``Comparisons``).

    ``runs``: finished runs (model, size_kind, size_value, fraction, n_train, seed, run_id,
    ``metric``). ``predictions``/``y_test`` (run_id -> predicted test labels) enable McNemar.
    Bootstrap seeds are derived from ``seed`` and the row's position: reruns agree exactly.
    """
    rows, by_seed = [], []
    sizes = runs.groupby(["size_kind", "size_value"], sort=True)
    for (kind, value), group in sizes:
        table = group.pivot_table(index="seed", columns="model", values=metric, aggfunc="first")
        ids = (
            group.pivot_table(index="seed", columns="model", values="run_id", aggfunc="first")
            if "run_id" in group
            else None
        )
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
            row["ci_low"], row["ci_high"] = (
                bootstrap_mean_ci(d, confidence, n_boot, seed=seed + len(rows)) if n else (np.nan, np.nan)
            )
            row.update(_paired_tests(d, alpha, notes))
            row["p_a_better"] = float(np.mean((d > 0) + 0.5 * (d == 0))) if n else np.nan
            matched = []  # (b, c) of each seed whose two runs both have test predictions
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
                        matched.append((bb, cc))
            if matched:
                b_sum, c_sum = (int(v) for v in np.sum(matched, axis=0))
                row.update(
                    mcnemar_b=b_sum,
                    mcnemar_c=c_sum,
                    p_mcnemar=1.0 if b_sum + c_sum == 0 else float(stats.binomtest(b_sum, b_sum + c_sum, 0.5).pvalue),
                )
            else:
                row.update(mcnemar_b=np.nan, mcnemar_c=np.nan, p_mcnemar=np.nan)
                notes.append("no test predictions for McNemar")
            row["note"] = "; ".join(notes)
            rows.append(row)
    frame = pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)
    for test in ("t", "wilcoxon", "mcnemar"):
        frame[f"p_{test}_holm"] = holm(frame[f"p_{test}"].to_numpy(float)) if len(frame) else []
    frame["significant"] = (frame["p_t_holm"] < alpha).astype(bool)
    _note_too_few_seeds(frame, alpha)
    for col in ("mcnemar_b", "mcnemar_c"):
        frame[col] = frame[col].astype("Int64")
    return Comparisons(frame, pd.DataFrame(by_seed, columns=MCNEMAR_COLUMNS), alpha)


def _paired_tests(d: np.ndarray, alpha: float, notes: list[str]) -> dict:
    n = len(d)
    out = {
        "t_stat": np.nan,
        "p_t": np.nan,
        "w_stat": np.nan,
        "p_wilcoxon": np.nan,
        "n_nonzero": int((d != 0).sum()),
        "min_p_wilcoxon": min_p_wilcoxon(int((d != 0).sum())),
        "seeds_for_power": np.nan,
    }
    if n < 2:
        notes.append(f"{n} paired seed(s): no paired test")
        return out
    sd = d.std(ddof=1)
    if sd == 0:
        notes.append("every seed gives the same difference: t-test undefined")
    else:
        res = stats.ttest_rel(d, np.zeros(n))
        out.update(
            t_stat=float(res.statistic), p_t=float(res.pvalue), seeds_for_power=seeds_for_power(d.mean() / sd, alpha)
        )
    if np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.wilcoxon(d)
        out.update(w_stat=float(res.statistic), p_wilcoxon=float(res.pvalue))
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
    """ranks: average rank per model (1 = best) over blocks (RANK_COLUMNS); a block is one
    (size, seed) in which every model finished. friedman: one row (FRIEDMAN_COLUMNS) with the
    Friedman test and the Nemenyi critical difference (the data of a critical-difference
    diagram). posthoc: Nemenyi's test for every pair (POSTHOC_COLUMNS)."""

    ranks: pd.DataFrame
    friedman: pd.DataFrame
    posthoc: pd.DataFrame


def rank_tests(runs: pd.DataFrame, alpha: float = 0.05, metric: str = "test_acc") -> RankTests:
    """Friedman test and average ranks of the models over every (size, seed) block."""
    blocks = runs.pivot_table(
        index=["size_kind", "size_value", "seed"], columns="model", values=metric, aggfunc="first"
    ).dropna()
    models = sorted(runs["model"].unique())
    k, n = len(blocks.columns), len(blocks)
    if k == 0 or n == 0:
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
    ranks = stats.rankdata(-blocks.to_numpy(float), axis=1)  # rank 1 = most accurate
    average = pd.Series(ranks.mean(axis=0), index=blocks.columns)
    rank_frame = (
        pd.DataFrame({"model": average.index, "average_rank": average.to_numpy(), "n_blocks": n})
        .sort_values(["average_rank", "model"])
        .reset_index(drop=True)
    )
    stat, p, note = np.nan, np.nan, ""
    if k < 3:
        note = "the Friedman test needs three or more models; see the pairwise table"
    elif n < 2:
        note = "one block: no Friedman test"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.friedmanchisquare(*blocks.to_numpy(float).T)
        stat, p = float(res.statistic), float(res.pvalue)
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
    return RankTests(rank_frame, friedman, pd.DataFrame(post, columns=POSTHOC_COLUMNS))
