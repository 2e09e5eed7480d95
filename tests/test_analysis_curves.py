"""Learning curves, images needed and the efficiency score: known-answer tests on curves drawn
from known functions with noise."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.curves import (
    FAMILIES,
    aicc,
    curve_bands,
    fit_family,
    fit_learning_curves,
    monotonicity_problem,
    summarize,
)
from analysis.efficiency import data_needed, data_ratios, efficiency_scores, targets_table

SIZES = np.array([50, 100, 200, 400, 800, 1600])
TRUE = {"a": 0.92, "b": 3.0, "c": 0.5}  # acc(n) = a - b n^-c in natural units


def _runs(curves: dict, seeds: int = 8, noise: float = 0.01, sizes=SIZES, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model, f in curves.items():
        for s in range(seeds):
            for n in sizes:
                rows.append(
                    {
                        "model": model,
                        "seed": s,
                        "n_train": int(n),
                        "fraction": n / sizes.max(),
                        "test_acc": f(n) + rng.normal(0, noise),
                    }
                )
    return pd.DataFrame(rows)


def _power(n, a=TRUE["a"], b=TRUE["b"], c=TRUE["c"]):
    return a - b * n**-c


@pytest.fixture(scope="module")
def known():
    runs = _runs({"power": _power, "saturating": lambda n: 0.8 - 0.5 * np.exp(-n / 300)})
    return runs, fit_learning_curves(runs)


def test_power_law_parameters_are_recovered(known):
    _, curves = known
    curve = curves.curves["power"]
    fits = curves.fits[(curves.fits["model"] == "power") & (curves.fits["status"] == "ok")]
    assert fits.loc[fits["aicc"].idxmin(), "family"] == "pow3"  # the true family wins on AICc
    assert curve.weights["pow3"] == max(curve.weights.values())  # and weighs most in the average
    a, b_scaled, c = curve.members["pow3"]
    b = b_scaled * curve.n_scale**c  # back from x = n / n_scale to natural units
    assert a == pytest.approx(TRUE["a"], abs=0.015)
    assert c == pytest.approx(TRUE["c"], abs=0.08)
    assert b == pytest.approx(TRUE["b"], rel=0.3)
    fit_row = fits[fits["family"] == "pow3"].iloc[0]
    assert fit_row["rmse"] == pytest.approx(0.01, abs=0.003)  # the noise level


def test_true_images_needed_lies_inside_its_interval(known):
    _, curves = known
    needed = data_needed(curves, [0.80, 0.85]).set_index(["model", "target"])  # plain targets
    for target in (0.80, 0.85):
        true_n = (TRUE["b"] / (TRUE["a"] - target)) ** (1 / TRUE["c"])
        row = needed.loc[("power", target)]
        assert row["ci_low"] <= true_n <= row["ci_high"], (target, true_n, row.to_dict())
        assert row["ci_low"] < row["n_star"] < row["ci_high"]
    assert needed.loc[("power", 0.80), "status"] == "ok" and not needed.loc[("power", 0.80), "extrapolated"]
    beyond = needed.loc[("power", 0.85)]  # n* about 1,840: beyond the largest size (1,600), flagged
    assert beyond["status"] == "extrapolated" and beyond["extrapolated"]
    assert beyond["extrapolation_factor"] == pytest.approx(beyond["n_star"] / 1600)
    assert needed.loc[("power", 0.80), "n_observed"] == 800  # the measured check: the true curve passes 0.80 at 703
    assert np.isnan(needed.loc[("power", 0.85), "n_observed"])  # and 0.85 at 1,837, beyond every measured size


def test_unreachable_and_extrapolated_targets_are_flagged(known):
    _, curves = known
    needed = data_needed(curves, targets_table(curves.summary, [0.4, 0.9, 0.99])).set_index(["model", "target"])
    assert needed.loc[("saturating", 0.9), "status"] == "not reached" and np.isinf(
        needed.loc[("saturating", 0.9), "n_star"]
    )
    far = needed.loc[("power", 0.9)]  # true n* = 22,500: far beyond twice the largest size (1,600)
    assert far["status"] == "extrapolated" and far["extrapolated"] and far["n_star"] > 3200
    assert needed.loc[("power", 0.99), "status"] == "not reached"  # above the asymptote
    below = needed.loc[("power", 0.4)]  # true n* = 33, below the smallest measured size (50)
    assert below["status"] == "below measured range" and below["upper_bound"]
    assert below["n_star"] == 50 and below["ci_low"] >= 50  # censored: "at most 50", never "1 image"


def test_ratio_against_a_model_censored_at_its_smallest_size_is_a_bound(known):
    _, curves = known
    ratios = data_ratios(curves, targets_table(curves.summary, [0.4]))
    row = ratios[(ratios["model_a"] == "power") & (ratios["model_b"] == "saturating")].iloc[0]
    # power reaches 0.4 below its smallest size (50), saturating at about 67 images
    assert row["bound"] == "<=" and "needs at most" in row["sentence"]
    assert row["ratio"] == pytest.approx(50 / curves.curves["saturating"].images_needed(0.4))


def test_ratio_between_models_is_paired_and_phrased(known):
    _, curves = known
    targets = targets_table(curves.summary, [0.7])
    ratios = data_ratios(curves, targets)
    row = ratios.iloc[0]
    true_power = (TRUE["b"] / (TRUE["a"] - 0.7)) ** 2
    true_saturating = -300 * np.log((0.8 - 0.7) / 0.5)
    assert (row["model_a"], row["model_b"]) == ("power", "saturating")
    assert row["ci_low"] <= true_power / true_saturating <= row["ci_high"]
    assert row["sentence"].startswith("power needs ") and "the images saturating needs" in row["sentence"]


def test_default_targets_are_shares_of_the_best_full_data_accuracy(known):
    _, curves = known
    t = targets_table(curves.summary)
    best = curves.summary[curves.summary["n_train"] == 1600]["mean"].max()
    assert t["target"].tolist() == pytest.approx([0.9 * best, 0.95 * best])
    assert t["reference_model"].iloc[0] == "power"


def test_efficiency_score_is_the_mean_accuracy_over_log_size():
    # accuracy linear in log n from 0.5 to 0.9: the normalised area is exactly the midpoint, 0.7
    runs = _runs({"lin": lambda n: 0.5 + 0.4 * np.log(n / 50) / np.log(32), "flat": lambda n: 0.6}, seeds=4, noise=0.0)
    scores = efficiency_scores(fit_learning_curves(runs)).set_index("model")
    assert scores.loc["lin", "score"] == pytest.approx(0.7)
    assert scores.loc["flat", "score"] == pytest.approx(0.6)
    assert scores.loc["flat", "ci_low"] == pytest.approx(0.6) and scores.loc["flat", "ci_high"] == pytest.approx(0.6)


def test_a_curve_that_falls_is_reported_and_not_fitted():
    runs = _runs({"falls": lambda n: 0.9 - 0.2 * (n > 300), "rises": _power}, seeds=3, noise=0.005)
    curves = fit_learning_curves(runs)
    assert "falls" not in curves.curves and "rises" in curves.curves
    rows = curves.fits[curves.fits["model"] == "falls"]
    assert set(rows["status"]) == {"not monotone"} and not rows["selected"].any()
    assert "mean accuracy falls from" in curves.notes["falls"]
    assert set(curve_bands(curves)["model"]) == {"rises"}  # nothing drawn for the falling one
    needed = data_needed(curves, targets_table(curves.summary, [0.8]))
    assert needed.set_index("model").loc["falls", "status"] == "no fit"


def test_noise_dips_are_not_called_non_monotone():
    s = pd.DataFrame(
        {"n_train": [100, 200, 400], "mean": [0.80, 0.795, 0.85], "std": [0.02, 0.02, 0.02], "n_seeds": [3, 3, 3]}
    )
    assert monotonicity_problem(s) == ""
    s.loc[1, "mean"] = 0.70
    assert "falls from 0.800 at 100 images to 0.700 at 200" in monotonicity_problem(s)


def test_too_few_sizes_gives_no_fit_and_says_why():
    runs = _runs({"two": _power}, seeds=3, sizes=np.array([100, 1000]))
    curves = fit_learning_curves(runs)
    assert curves.curves == {}
    assert set(curves.fits["status"]) == {"too few sizes"}
    assert "needs 3 sizes" in curves.fits.iloc[0]["note"]


def test_extrapolation_selection_and_rejection_of_bad_fits():
    runs = _runs({"power": _power}, seeds=3)
    curves = fit_learning_curves(runs, select="extrapolation")
    fits = curves.fits[curves.fits["status"] == "ok"]
    chosen = fits[fits["selected"]].iloc[0]
    assert chosen["lolo_error"] == fits["lolo_error"].min()
    with pytest.raises(ValueError, match="select="):
        fit_learning_curves(runs, select="best")
    # Falling data: the bounded families can only lie flat; mmf4 could fall, and that fit is rejected
    x = np.array([0.1, 0.2, 0.5, 1.0] * 3)
    assert fit_family(FAMILIES["mmf4"], x, 1.0 - x) is None
    flat = fit_family(FAMILIES["pow3"], x, 1.0 - x)
    assert flat[1] == pytest.approx(0, abs=1e-6) and flat[0] == pytest.approx(np.mean(1.0 - x))
    # A family that only gives non-finite values never yields a fit
    broken = dataclasses.replace(FAMILIES["pow3"], func=lambda x, t: np.full(len(x), np.inf))
    assert fit_family(broken, x, 1.0 - x) is None


def test_fits_are_finite_for_every_family_on_clean_data():
    x = np.repeat([0.05, 0.1, 0.25, 0.5, 1.0], 3)
    y = 0.9 - 0.05 * x**-0.5 + np.random.default_rng(0).normal(0, 0.005, len(x))
    for name, family in FAMILIES.items():
        theta = fit_family(family, x, y)
        assert theta is not None, name
        assert np.sqrt(np.mean((family(x, theta) - y) ** 2)) < 0.02, name
    assert aicc(0.1, 4, 3) == np.inf  # too few points for the correction


def test_summary_interval_is_student_t_clipped_to_accuracy_range():
    runs = pd.DataFrame(
        {"model": "m", "n_train": 10, "fraction": 1.0, "seed": [0, 1, 2], "test_acc": [0.90, 0.95, 1.0]}
    )
    s = summarize(runs).iloc[0]
    half = 4.302652729911275 * 0.05 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert s["mean"] == pytest.approx(0.95) and s["ci_low"] == pytest.approx(0.95 - half)
    assert s["ci_high"] == 1.0


def test_efficiency_score_interval_covers_the_true_score_at_close_to_the_nominal_rate():
    """150 simulated studies (6 seeds, 4 sizes, a seed effect shared by the sizes): the 95%
    t interval over the seeds' scores should hold the true score in about 95% of them."""
    sizes = np.array([100, 200, 400, 800])
    true_means = 0.5 + 0.1 * np.arange(4)
    true_score = float(np.trapezoid(true_means, np.log(sizes)) / np.log(8))
    rng = np.random.default_rng(7)
    hits, trials = 0, 150
    for _ in range(trials):
        seed_effect = rng.normal(0, 0.02, size=(6, 1))
        acc = true_means + seed_effect + rng.normal(0, 0.01, size=(6, 4))
        runs = pd.DataFrame(
            [
                {"model": "m", "seed": s, "n_train": n, "fraction": n / 800, "test_acc": acc[s, j]}
                for s in range(6)
                for j, n in enumerate(sizes)
            ]
        )
        row = efficiency_scores(fit_learning_curves(runs, families=())).iloc[0]
        hits += row["ci_low"] <= true_score <= row["ci_high"]
    assert 0.90 <= hits / trials <= 0.99, hits / trials


def test_band_seed_term_uses_the_seeds_measured_at_each_size():
    """Under sequential seeds sizes carry different seed counts: the band's seed term takes t on
    the seeds measured at that size less one (2 seeds: t(1); 5 seeds: t(4)), not one df for all."""
    runs = _runs({"a": _power}, seeds=5, noise=0.01)
    few = {50, 100, 200}  # these sizes were stopped at 2 seeds, the others reached 5
    runs = runs[~(runs["n_train"].isin(few) & (runs["seed"] >= 2))]
    curves = fit_learning_curves(runs, select="pow3")
    curve = dataclasses.replace(curves.curves["a"], misfit_sd=0.0)  # isolate the seed term
    assert list(curve.seed_df(SIZES)) == [1, 1, 1, 4, 4, 4]
    fit, low, high = curve.interval(SIZES)
    dev = fit - curve.jackknife_predictions(SIZES)
    s = len(dev)
    assert s == 5
    se = np.sqrt((s - 1) / s * np.sum((dev - dev.mean(axis=0)) ** 2, axis=0))
    half = (high - low) / 2
    assert np.allclose(half[:3], stats.t.ppf(0.975, 1) * se[:3])
    assert np.allclose(half[3:], stats.t.ppf(0.975, 4) * se[3:])
    # one df for the whole curve (S - 1 = 4) would make the 2-seed sizes 3.3 times too narrow
    assert np.all(half[:3] > 3 * stats.t.ppf(0.975, 4) * se[:3])


def test_band_carries_the_spread_between_averaged_families_inside_the_data():
    """Inside the measured sizes the band adds z x sqrt(sum_f w_f (f - average)^2), the spread of
    the averaged families (their weights held fixed, the jackknife cannot see it); beyond n_max it
    fades out over the first doubling, and a single family has none."""
    runs = _runs({"a": lambda n: 0.88 - 0.5 * np.exp(-1.5 * (n / 800) ** 0.7)}, seeds=10, noise=0.01)
    curve = dataclasses.replace(fit_learning_curves(runs).curves["a"], misfit_sd=0.0)
    assert len(curve.weights) >= 2
    n = np.array([70.0, 300.0, 1100.0])
    avg = curve.predict(n)
    by_hand = np.sqrt(
        sum(w * (FAMILIES[f](n / curve.n_scale, curve.members[f]) - avg) ** 2 for f, w in curve.weights.items())
    )
    assert np.allclose(curve.between_sd(n), by_hand) and np.all(by_hand > 0)
    edge = curve.between_sd([1600.0])[0]
    assert np.allclose(curve.between_sd([1600 * 2**0.25, 3200.0, 12800.0]), [0.75 * edge, 0.0, 0.0])
    fit, low, high = curve.interval(n)
    dev = fit - curve.jackknife_predictions(n)
    seed = stats.t.ppf(0.975, 9) * np.sqrt(9 / 10 * np.sum((dev - dev.mean(axis=0)) ** 2, axis=0))
    assert np.allclose((high - low) / 2, np.sqrt(seed**2 + (stats.norm.ppf(0.975) * by_hand) ** 2))
    single = fit_learning_curves(runs, select="pow3").curves["a"]
    assert np.all(single.between_sd(np.array([70.0, 3200.0])) == 0)
