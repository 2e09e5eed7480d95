"""The main table's interval: accuracy on the population the test set was drawn from (seeds and
test items), checked against hand computations and a small simulation with known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.population import (
    BINOMIAL,
    ITEMS,
    NESTED,
    binomial_population_interval,
    nested_population_interval,
    population_accuracy,
    population_interval,
    wilson_interval,
)


def test_variance_components_match_the_two_way_anova_by_hand():
    y = np.array([[1, 1, 0, 1, 0, 1], [1, 0, 0, 1, 1, 1], [1, 1, 0, 1, 0, 0]], dtype=float)
    s, n = y.shape
    g = y.mean()
    ms_seed = n * np.sum((y.mean(1) - g) ** 2) / (s - 1)
    ms_item = s * np.sum((y.mean(0) - g) ** 2) / (n - 1)
    ms_res = np.sum((y - y.mean(1)[:, None] - y.mean(0)[None, :] + g) ** 2) / ((s - 1) * (n - 1))
    assert ms_item > ms_res > ms_seed  # the seed component is negative: set to 0, Var = MS_item / (S N)
    r = population_interval(y)
    assert r["se"] == pytest.approx(np.sqrt(ms_item / (s * n)))
    assert r["df"] == pytest.approx(n - 1)  # one mean square: its own degrees of freedom
    assert r["mean"] == pytest.approx(g)
    n_eff = g * (1 - g) / r["se"] ** 2
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson_interval(g, n_eff, n - 1))


def test_seeds_that_tie_still_carry_the_test_sets_sampling_error():
    # three seeds wrong on the same 4 of 359 images: 98.9% on every seed, seed spread 0
    y = np.ones((3, 359), dtype=bool)
    y[:, :4] = False
    r = population_interval(y)
    p = 355 / 359
    assert r["mean"] == pytest.approx(p) and r["se_seed"] == 0
    assert r["se"] == pytest.approx(np.sqrt(p * (1 - p) / 358), rel=1e-6)  # about 0.55 pp: the binomial error
    assert 0 < r["ci_low"] < p < r["ci_high"] < 1
    assert r["ci_high"] - r["ci_low"] > 0.015  # not "98.9 [98.9, 98.9]"


def test_a_perfect_score_gets_a_one_sided_interval_inside_0_100():
    r = population_interval(np.ones((3, 359), dtype=bool))
    t2 = stats.t.ppf(0.975, 358) ** 2
    assert r["ci_high"] == 1.0 and r["ci_low"] == pytest.approx(359 / (359 + t2))
    assert 0.985 < r["ci_low"] < 0.995
    b = binomial_population_interval(np.array([0.9, 0.95, 0.99]), 359)
    assert 0 <= b["ci_low"] < b["mean"] < b["ci_high"] <= 1


def test_one_seed_has_no_population_interval():
    r = population_interval(np.ones((1, 50), dtype=bool))
    assert np.isnan(r["ci_low"]) and np.isnan(r["ci_high"])


def test_the_interval_covers_the_population_accuracy_in_a_simulation():
    # items drawn from a population (logit difficulty sd 1.5); 5 seeds, each with its own luck
    rng = np.random.default_rng(3)
    grid = 1.5 * stats.norm.ppf((np.arange(4000) + 0.5) / 4000)
    z, w = np.polynomial.hermite_e.hermegauss(21)
    w = w / w.sum()
    base, luck_sd = 1.5, 0.05
    per_luck = (1 / (1 + np.exp(-(base + luck_sd * z[:, None] - grid)))).mean(axis=1)
    truth = float((w * per_luck).sum())
    hits, seed_only, trials = 0, 0, 300
    for _ in range(trials):
        items = rng.normal(0, 1.5, 300)
        ability = base + rng.normal(0, luck_sd, 5)
        y = rng.random((5, 300)) < 1 / (1 + np.exp(-(ability[:, None] - items)))
        r = population_interval(y)
        hits += r["ci_low"] <= truth <= r["ci_high"]
        acc = y.mean(axis=1)
        half = stats.t.ppf(0.975, 4) * acc.std(ddof=1) / np.sqrt(5)
        seed_only += acc.mean() - half <= truth <= acc.mean() + half
    assert 0.91 <= hits / trials <= 0.99
    assert seed_only / trials < 0.85  # the seed-only interval misses the test set's sampling error


def test_population_accuracy_uses_predictions_where_every_run_has_them():
    y_test = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    preds = {1: y_test.copy(), 2: y_test.copy(), 3: np.roll(y_test, 1)}
    preds[2][0] = 1
    runs = pd.DataFrame(
        {
            "run_id": [1, 2, 3],
            "model": ["a", "a", "b"],
            "seed": [0, 1, 0],
            "n_train": [10, 10, 10],
            "test_acc": [1.0, 7 / 8, 0.0],
        }
    )
    out = population_accuracy(runs, preds, y_test).set_index("model")
    assert out.loc["a", "method"] == ITEMS and out.loc["a", "mean"] == pytest.approx(15 / 16)
    assert 0 <= out.loc["a", "ci_low"] < out.loc["a", "ci_high"] <= 1
    assert np.isnan(out.loc["b", "ci_low"]) and "one seed" in out.loc["b", "method"]
    no_preds = population_accuracy(runs, {}, y_test).set_index("model")
    assert no_preds.loc["a", "method"] == BINOMIAL and no_preds.loc["a", "n_test"] == 8


def test_with_a_split_per_seed_the_spread_over_seeds_carries_the_test_sampling():
    # by hand: mean 0.9, sample variance 0.0004 over 3 seeds -> Var 0.0004 / 3 on 2 df
    r = nested_population_interval(np.array([0.88, 0.90, 0.92]), 400)
    assert r["se"] == pytest.approx(np.sqrt(0.0004 / 3)) and r["df"] == 2
    lo, hi = wilson_interval(0.9, 0.9 * 0.1 / (0.0004 / 3), 2)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi))
    # seeds that agree: the floor is the test sampling of S splits of 400 images, never zero width
    tie = nested_population_interval(np.array([0.9, 0.9, 0.9]), 400)
    assert tie["se"] == pytest.approx(np.sqrt(0.9 * 0.1 / 1200)) and tie["ci_low"] < 0.9 < tie["ci_high"]


def test_population_accuracy_with_a_split_per_seed_does_not_read_seed_0s_labels():
    # seed 1's predictions are right on its own split; against seed 0's labels they would be all wrong
    y_test = np.array([0, 1, 0, 1])
    preds = {1: y_test.copy(), 2: 1 - y_test}
    runs = pd.DataFrame({"run_id": [1, 2], "model": "a", "seed": [0, 1], "n_train": 10, "test_acc": [1.0, 1.0]})
    out = population_accuracy(runs, preds, y_test, split_per_seed=True).iloc[0]
    assert out["method"] == NESTED and out["mean"] == 1.0 and 0.0 < out["ci_low"] < 1.0 == out["ci_high"]
    crossed = population_accuracy(runs, preds, y_test).iloc[0]
    assert crossed["mean"] == 0.5  # what reading seed 0's labels for every run gave
