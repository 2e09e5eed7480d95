"""Group-sequential tests that spend their error (``analysis.group_sequential``): boundaries
against published values and an independent bivariate-normal computation, the test's decision
and repeated interval on constructed differences, and the ``--until-ci`` rule that stops a
decided pair and gives seeds to the undecided."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.group_sequential import OBRIEN_FLEMING, POCOCK, boundaries, look, look_fractions, spent
from analysis.sequential import MORE, Target, plan_next


@pytest.mark.parametrize(
    "spending, fractions, expected",
    [
        # Lan-DeMets spending, two-sided alpha 0.05 (gsDesign sfLDOF / sfLDPocock, rpact asOF / asP)
        (OBRIEN_FLEMING, [0.5, 1.0], [2.963, 1.969]),
        (OBRIEN_FLEMING, [0.2, 0.4, 0.6, 0.8, 1.0], [4.877, 3.357, 2.680, 2.290, 2.031]),
        (POCOCK, [0.5, 1.0], [2.157, 2.201]),
        (POCOCK, [0.2, 0.4, 0.6, 0.8, 1.0], [2.438, 2.427, 2.410, 2.397, 2.386]),
        (OBRIEN_FLEMING, [1.0], [1.960]),
        (POCOCK, [1.0], [1.960]),
    ],
)
def test_boundaries_match_published_values(spending, fractions, expected):
    assert boundaries(fractions, 0.05, spending) == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("spending", [OBRIEN_FLEMING, POCOCK])
def test_boundaries_spend_exactly_their_error_under_the_null(spending):
    """Two looks at unequal information: the first crossing probabilities, computed independently
    with the bivariate normal of (Z1, Z2), correlation sqrt(t1 / t2), are the error spent."""
    t = [0.3, 1.0]
    c1, c2 = boundaries(t, 0.05, spending)
    assert 2 * stats.norm.sf(c1) == pytest.approx(spent(0.3, 0.05, spending), rel=1e-6)
    r = np.sqrt(t[0] / t[1])
    mvn = stats.multivariate_normal([0, 0], [[1, r], [r, 1]])
    inside = mvn.cdf([c1, c2]) - mvn.cdf([-c1, c2]) - mvn.cdf([c1, -c2]) + mvn.cdf([-c1, -c2])
    assert 1 - inside == pytest.approx(0.05, abs=2e-4)


def test_looks_are_every_seed_count_from_the_first_seeds():
    assert look_fractions(5, 3, 10) == pytest.approx([0.3, 0.4, 0.5])
    assert look_fractions(2, 3, 10) == pytest.approx([0.2])  # fewer seeds than the first look: one look


def test_a_consistent_difference_is_decided_early_under_pocock_not_under_obrien_fleming():
    d = np.array([0.10, 0.11, 0.09])  # paired t = 17.3 on 2 df: p = 0.0033
    pocock = look(d, first=3, max_seeds=10, spending=POCOCK)
    assert pocock["level"] == pytest.approx(spent(0.3, 0.05, POCOCK))  # the first look spends alpha(0.3) = 0.0208
    assert pocock["decided"] and pocock["decided_at"] == 3
    assert pocock["ci_low"] > 0  # the repeated interval excludes 0 exactly when the look rejects
    obf = look(d, first=3, max_seeds=10, spending=OBRIEN_FLEMING)
    assert obf["level"] < 1e-4 and not obf["decided"] and obf["ci_low"] < 0 < obf["ci_high"]


def test_a_decision_stands_whatever_later_seeds_show():
    d = np.array([0.10, 0.11, 0.09, -0.2, 0.3, -0.1])
    out = look(d, first=3, max_seeds=10, spending=POCOCK)
    assert out["decided"] and out["decided_at"] == 3 and out["n"] == 6
    assert out["ci_low"] < 0 < out["ci_high"]  # the latest look's interval, wide again


def test_a_null_difference_and_a_constant_zero_are_not_decided():
    rng = np.random.default_rng(0)
    assert not look(rng.normal(0, 0.02, 8), 3, 10)["decided"]
    assert not look(np.zeros(5), 3, 10, floor=0.002)["decided"]
    assert look(np.full(5, 0.05), 3, 10, floor=0.002)["decided"]  # a constant 5-point gap, well above the floor


def _runs(diffs: dict[int, np.ndarray]) -> pd.DataFrame:
    """Arms a and b at sizes whose differences a - b are ``diffs[size]``, one run per seed."""
    rows = []
    for n, d in diffs.items():
        for s, x in enumerate(d):
            for arm, acc in (("a", 0.8 + x / 2), ("b", 0.8 - x / 2)):
                rows.append(
                    {"run_id": len(rows) + 1, "arm": arm, "model": arm, "size_kind": "n_train"}
                    | {"size_value": float(n), "fraction": n / 200, "n_train": n, "seed": s, "status": "done"}
                    | {"test_acc": acc, "train_seconds": 1.0}
                )
    return pd.DataFrame(rows)


def test_the_rule_stops_a_decided_pair_and_gives_seeds_to_the_undecided():
    """At 100 images a wide but clearly decided difference; at 200 an undecided one of the same
    spread: only the undecided pair asks for a seed, although both are wider than the target."""
    decided = np.array([0.20, 0.17, 0.23])  # mean 20 points, sd 3: p = 0.0075 < Pocock's 0.0208
    undecided = np.array([0.06, 0.00, -0.06])
    plan = plan_next(_runs({100: decided, 200: undecided}), Target(width=0.02, max_seeds=10), 500)
    diffs = plan.intervals[plan.intervals["kind"] == "difference"].set_index("n_train")
    assert diffs.loc[100, "half_width"] > 0.02 and diffs.loc[100, "decided"] and not diffs.loc[100, "short"]
    assert diffs.loc[200, "short"] and not diffs.loc[200, "decided"]
    assert plan.reason == MORE
    assert {(arm, value) for arm, _, value, _ in plan.add} >= {("a", 200.0), ("b", 200.0)}
    asked = plan.short[plan.short["kind"] == "difference"]
    assert asked["n_train"].tolist() == [200]
