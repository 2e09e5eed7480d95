"""Significance tests against reference computations on fixed data, and the coverage of the
bootstrap intervals in a small simulation."""

import warnings
from math import comb

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.inference import _nct_sf
from analysis.stats import (
    bootstrap_mean_ci,
    difference_floor,
    distinct_resamples,
    friedman_permutation,
    holm,
    mcnemar_exact,
    min_p_wilcoxon,
    paired_comparisons,
    paired_t_power,
    rank_tests,
    seeds_for_power,
    seeds_needed_wilcoxon,
    t_summary,
    wilcoxon_signed_rank,
)

# Test accuracies of three models, six seeds, two sizes (fixed data for reference checks)
ACC = {
    ("a", 0.5): [0.71, 0.74, 0.69, 0.73, 0.70, 0.72],
    ("b", 0.5): [0.75, 0.76, 0.74, 0.78, 0.73, 0.77],
    ("c", 0.5): [0.70, 0.75, 0.70, 0.72, 0.71, 0.74],
    ("a", 1.0): [0.80, 0.82, 0.79, 0.81, 0.83, 0.80],
    ("b", 1.0): [0.84, 0.85, 0.83, 0.86, 0.82, 0.87],
    ("c", 1.0): [0.81, 0.80, 0.82, 0.80, 0.81, 0.83],
}


def _runs() -> pd.DataFrame:
    rows, run_id = [], 0
    for (model, frac), values in ACC.items():
        for seed, acc in enumerate(values):
            run_id += 1
            rows.append(
                {
                    "run_id": run_id,
                    "model": model,
                    "size_kind": "fraction",
                    "size_value": frac,
                    "fraction": frac,
                    "n_train": int(1000 * frac),
                    "seed": seed,
                    "test_acc": acc,
                }
            )
    return pd.DataFrame(rows)


def _predictions(runs: pd.DataFrame, n_test: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n_test)
    preds = {}
    for r in runs.itertuples():
        correct = rng.random(n_test) < r.test_acc
        preds[r.run_id] = np.where(correct, y, (y + 1) % 4).astype(np.int32)
    return preds, y


def test_holm_matches_a_hand_computed_example():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, np.nan, 0.01]) == pytest.approx(
        [0.5, np.nan, 0.02], nan_ok=True
    )  # NaN neither counts nor changes
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs():
    a = np.array([1] * 30 + [0] * 8 + [1] * 50 + [0] * 12, bool)
    b = np.array([0] * 30 + [1] * 8 + [1] * 50 + [0] * 12, bool)
    b_count, c_count, p = mcnemar_exact(a, b)
    assert (b_count, c_count) == (30, 8)
    n, k = 38, 8
    reference = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)  # exact two-sided binomial, by hand
    assert p == pytest.approx(reference, rel=1e-12)
    assert mcnemar_exact(a, a)[2] == 1.0


def test_paired_tests_agree_with_scipy_on_fixed_data():
    runs = _runs()
    preds, y = _predictions(runs)
    comp = paired_comparisons(runs, preds, y, n_boot=500)
    pw = comp.pairwise.set_index(["size_value", "model_a", "model_b"])
    assert len(pw) == 6
    for frac in (0.5, 1.0):
        for a, b in (("a", "b"), ("a", "c"), ("b", "c")):
            xa, xb = np.array(ACC[(a, frac)]), np.array(ACC[(b, frac)])
            row = pw.loc[(frac, a, b)]
            t = stats.ttest_rel(xa, xb)
            w = stats.wilcoxon(xa - xb)
            assert row["diff"] == pytest.approx(np.mean(xa - xb))
            assert row["t_stat"] == pytest.approx(t.statistic) and row["p_t"] == pytest.approx(t.pvalue)
            assert row["p_wilcoxon"] == pytest.approx(w.pvalue)
            assert row["p_a_better"] == pytest.approx(np.mean(xa > xb) + 0.5 * np.mean(xa == xb))
            # the interval is Student's t, so it excludes 0 exactly when the t-test's p < 0.05
            half = stats.t.ppf(0.975, 5) * np.std(xa - xb, ddof=1) / np.sqrt(6)
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((row["diff"] - half, row["diff"] + half))
            assert (row["ci_low"] > 0 or row["ci_high"] < 0) == (row["p_t"] < 0.05)
            # McNemar per seed (seeds share the test set), combined by Bonferroni over the seeds
            bb = cc = 0
            per_seed = []
            for seed in range(6):
                ra = runs[(runs.model == a) & (runs.size_value == frac) & (runs.seed == seed)].run_id.iloc[0]
                rb = runs[(runs.model == b) & (runs.size_value == frac) & (runs.seed == seed)].run_id.iloc[0]
                b1 = int(((preds[ra] == y) & (preds[rb] != y)).sum())
                c1 = int(((preds[ra] != y) & (preds[rb] == y)).sum())
                bb, cc = bb + b1, cc + c1
                per_seed.append(stats.binomtest(b1, b1 + c1, 0.5).pvalue if b1 + c1 else 1.0)
            assert (row["mcnemar_b"], row["mcnemar_c"]) == (bb, cc)
            assert row["p_mcnemar"] == pytest.approx(min(1.0, 6 * min(per_seed)))
    frame = comp.pairwise
    for test in ("t", "wilcoxon", "mcnemar"):
        assert frame[f"p_{test}_holm"].to_numpy() == pytest.approx(holm(frame[f"p_{test}"]))
    assert (frame["significant"] == (frame["p_t_holm"] < 0.05)).all()
    assert len(comp.mcnemar) == 6 * 6  # one per pair, size and seed


def test_bootstrap_interval_is_deterministic():
    runs = _runs()
    one = paired_comparisons(runs, n_boot=300, seed=3).pairwise
    two = paired_comparisons(runs, n_boot=300, seed=3).pairwise
    pd.testing.assert_frame_equal(one, two)


def test_too_few_seeds_is_said_plainly():
    assert min_p_wilcoxon(5) == 0.0625  # the example
    assert seeds_needed_wilcoxon(0.05) == 6
    assert seeds_needed_wilcoxon(0.05, n_comparisons=6) == 8  # 2/2^8 = 0.0078 <= 0.05/6
    runs = _runs()
    few = runs[runs["seed"] < 3]
    pw = paired_comparisons(few, n_boot=200).pairwise
    assert (pw["min_p_wilcoxon"] == 0.25).all()
    assert pw["note"].str.contains("the smallest possible Wilcoxon p is 0.25").all()
    assert pw["note"].str.contains("it needs 8 seeds").all()
    one = paired_comparisons(runs[runs["seed"] == 0], n_boot=200).pairwise
    assert one["p_t"].isna().all() and one["note"].str.contains("1 paired seed").all()


def test_power_matches_reference_values():
    # Reference values of the paired (one-sample) t-test, as given by G*Power: d = 1 with 10
    # pairs has power 0.803; d = 0.5 needs 34 pairs for 80%.
    assert paired_t_power(1.0, 10) == pytest.approx(0.8031, abs=5e-4)
    assert seeds_for_power(0.5) == 34
    assert np.isnan(seeds_for_power(0.0))


def test_friedman_uses_seeds_as_blocks_with_ranks_averaged_over_sizes():
    runs = _runs()
    r = rank_tests(runs)
    cells = runs.pivot_table(index=["seed", "size_value"], columns="model", values="test_acc")
    per_seed = pd.DataFrame(stats.rankdata(-cells.to_numpy(), axis=1), index=cells.index).groupby(level="seed").mean()
    f = r.friedman.iloc[0]
    assert f["n_blocks"] == 6  # the seeds, not the 12 (size, seed) pairs
    k, n = 3, 6
    expected_stat = 12 * n / (k * (k + 1)) * np.sum((per_seed.mean(axis=0).to_numpy() - 2) ** 2)
    assert f["statistic"] == pytest.approx(expected_stat)
    assert 0 < f["p_value"] < 0.05  # b wins on most seeds
    ranks = r.ranks.set_index("model")["average_rank"]
    assert [ranks[m] for m in ("a", "b", "c")] == pytest.approx(per_seed.mean(axis=0).to_numpy())
    assert r.ranks["model"].iloc[0] == "b"
    # Nemenyi critical difference with N = 6 seeds: q(0.05, k=3) = 2.343 (Demsar 2006, table 5)
    assert f["critical_difference"] == pytest.approx(2.3437 * np.sqrt(3 * 4 / (6 * 6)), rel=1e-3)
    assert len(r.by_size) == 2 and (r.by_size["n_blocks"] == 6).all()
    two = rank_tests(runs[runs["model"] != "c"])
    assert np.isnan(two.friedman.iloc[0]["p_value"]) and "three or more" in two.friedman.iloc[0]["note"]


def test_friedman_permutation_p_is_exact_for_three_blocks():
    # three seeds that all order the models the same way: 6 of the 6^3 equally likely patterns
    # give the largest statistic, so p = 6 / 216
    stat, p = friedman_permutation(np.array([[1.0, 2, 3], [1, 2, 3], [1, 2, 3]]))
    assert stat == pytest.approx(6.0) and p == pytest.approx(6 / 216)


def test_a_constant_difference_of_k_test_images_gives_a_finite_test():
    n_test = 400
    d = np.full(5, 3 / n_test)  # three images on every seed; float rounding may spread them by 1e-17
    d[2] += 1e-17
    t = t_summary(d, floor=difference_floor(n_test))
    assert np.isfinite(t["t_stat"]) and t["constant"] == 1.0
    assert t["t_stat"] == pytest.approx(3 * np.sqrt(6) * np.sqrt(5))  # k / floor-sd * sqrt(S)
    assert t["p"] < 0.001 and t["ci_low"] > 0
    zero = t_summary(np.zeros(5), floor=difference_floor(n_test))
    assert zero["p"] == pytest.approx(1.0) and zero["ci_low"] < 0 < zero["ci_high"]
    runs = pd.DataFrame(
        [
            {"model": m, "seed": s, "n_train": 100, "test_acc": (300 + 3 * (m == "a") + s) / n_test}
            for m in ("a", "b")
            for s in range(5)
        ]
    )  # no fraction, size_kind or run_id columns: the computation does not need them
    row = paired_comparisons(runs, n_test=n_test).pairwise.iloc[0]
    assert np.isfinite(row["p_t"]) and row["p_t"] < 0.01 and "the same +3 test image(s)" in row["note"]


def test_exact_bootstrap_enumerates_every_distinct_resample():
    counts, weights = distinct_resamples(5)
    assert len(counts) == comb(9, 5) == 126 and weights.sum() == pytest.approx(1.0)
    assert (counts.sum(axis=1) == 5).all()


def test_bootstrap_of_few_values_falls_back_to_student_t_and_says_so():
    # with 3 seeds the widest a bootstrap can be is [min, max], which covers 0.75: not a 95% interval
    values = np.array([0.1, 0.2, 0.3])
    with pytest.warns(UserWarning, match="3 values cannot support a 95% bootstrap interval"):
        lo, hi = bootstrap_mean_ci(values, 0.95)
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert (lo, hi) == pytest.approx((0.2 - half, 0.2 + half))
    assert lo < 0.1 and hi > 0.3
    rng = np.random.default_rng(7)
    hits = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(400):
            lo, hi = bootstrap_mean_ci(rng.normal(0, 1, 3))
            hits += lo <= 0 <= hi
    assert 0.92 <= hits / 400 <= 0.98  # the bootstrap's [min, max] covered 0.75 here


def test_power_is_right_far_in_the_lower_tail_at_holm_levels():
    # scipy's nct.cdf(-crit, df, nc) is NaN here; NaN used to read as "not enough power"
    assert paired_t_power(3.19, 5, 0.05 / 6) == pytest.approx(0.9029, abs=5e-4)
    assert seeds_for_power(3.19, 0.05 / 6) == 5  # was 6 (7 with this scipy)
    assert seeds_for_power(3.0, 0.0025) == 6  # was 9
    assert _nct_sf(4.85, 4, -7.13) < 1e-16  # P(T < -4.85) under nc 7.13: 1.3e-17 by quadrature


def test_wilcoxon_ranks_whole_test_images_with_mid_ranks():
    n_test = 400
    a = np.array([343, 350, 362, 308, 300]) / n_test
    b = np.array([342, 348, 363, 304, 299]) / n_test
    d = a - b  # +1, +2, -1, +4, +1 images; the three 1-image differences differ by 1e-17 as floats
    assert wilcoxon_signed_rank(d)[1] == pytest.approx(0.1875)  # raw floats: distinct ranks
    w, p = wilcoxon_signed_rank(d, n_test)
    assert p == pytest.approx(8 / 32) and w == 2.0  # mid-rank 2 for the tied ones: W- = 2
    runs = pd.DataFrame(
        [{"model": m, "seed": s, "n_train": 100, "test_acc": v[s]} for m, v in (("a", a), ("b", b)) for s in range(5)]
    )
    assert paired_comparisons(runs, n_test=n_test).pairwise.iloc[0]["p_wilcoxon"] == pytest.approx(0.25)


def test_seeds_for_power_uses_the_holm_level():
    runs = _runs()
    pw = paired_comparisons(runs).pairwise
    m = int(pw["p_t"].notna().sum())
    for _, r in pw.iterrows():
        d = np.array(ACC[(r["model_a"], r["size_value"])]) - np.array(ACC[(r["model_b"], r["size_value"])])
        assert r["seeds_for_power"] == seeds_for_power(d.mean() / d.std(ddof=1), 0.05 / m)


@pytest.mark.parametrize("n_seeds", [7, 12])
def test_bootstrap_intervals_cover_the_true_mean_at_close_to_the_nominal_rate(n_seeds):
    """300 simulated studies of paired differences: the 95% interval should hold the true mean
    in about 95% of them (binomial sd 1.3%); a plain percentile interval gives ~88% here."""
    rng = np.random.default_rng(12345)
    true_mean, hits, trials = 0.02, 0, 300
    for i in range(trials):
        diffs = rng.normal(true_mean, 0.03, size=n_seeds)
        lo, hi = bootstrap_mean_ci(diffs, 0.95, n_boot=999, seed=i)
        hits += lo <= true_mean <= hi
    coverage = hits / trials
    assert 0.91 <= coverage <= 0.985, coverage
