"""Known-answer tests of the answers added for issue 13: crossovers, parameter intervals, score
differences, predictions at any size, images needed beyond the data, and warnings for too few
seeds. Curves are drawn from known functions with a seed effect shared by the sizes."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.curves import fit_learning_curves, monotonicity_problem, predict
from analysis.efficiency import crossovers, data_needed, data_ratios, score_differences
from analysis.load import StudyData
from analysis.sanity import sanity_checks

SIZES = np.array([100, 200, 400, 800, 1600])


def _runs(curves: dict, seeds: int = 6, noise: float = 0.006, luck: float = 0.006, seed: int = 0) -> pd.DataFrame:
    """Runs of each model: truth + the seed's luck (shared by its sizes) + noise. No fraction
    column: nothing needs one."""
    rng = np.random.default_rng(seed)
    rows = []
    for model, f in curves.items():
        for s in range(seeds):
            u = rng.normal(0, luck)
            for n in SIZES:
                rows.append({"model": model, "seed": s, "n_train": int(n), "test_acc": f(n) + u + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def fast(n):
    return 0.80 - 0.35 * np.exp(-n / 150)


def slow(n):
    return 0.95 - 4.0 * n**-0.5


def test_a_crossover_placed_on_purpose_is_found_inside_its_interval():
    grid = np.geomspace(100, 1600, 4000)
    true_cross = grid[np.flatnonzero(np.diff(np.sign(fast(grid) - slow(grid))))[0]]  # about 600 images
    curves = fit_learning_curves(_runs({"fast": fast, "slow": slow}))
    row = crossovers(curves).iloc[0]
    assert row["status"] == "within the measured range" and not row["extrapolated"]
    assert row["ci_low"] <= true_cross <= row["ci_high"], (true_cross, row.to_dict())
    assert row["ci_high"] / row["ci_low"] < 4  # an interval, not the whole range
    assert row["sentence"].startswith("slow overtakes fast at about")


def test_curves_that_never_cross_say_so():
    curves = fit_learning_curves(_runs({"fast": fast, "lower": lambda n: fast(n) - 0.05}))
    row = crossovers(curves).iloc[0]
    assert row["status"] == "no crossover" and np.isnan(row["n_cross"])
    assert "no crossover within the measured range" in row["sentence"] and "fast ahead" in row["sentence"]


def test_asymptote_and_exponent_intervals_cover_the_truth():
    """40 small studies of a pow3 curve (a = 0.9, c = 0.5) fitted with pow3 alone: the 95%
    jackknife t intervals should hold the true asymptote and exponent in most of them."""
    hits = {"asymptote": 0, "exponent": 0}
    trials = 40
    for i in range(trials):
        runs = _runs({"m": lambda n: 0.9 - 2.0 * n**-0.5}, seeds=5, seed=100 + i)
        params = fit_learning_curves(runs, families=("pow3",), select="pow3").parameters.set_index("parameter")
        for name, true in (("asymptote", 0.9), ("exponent", 0.5)):
            hits[name] += params.loc[name, "ci_low"] <= true <= params.loc[name, "ci_high"]
    for name, count in hits.items():
        assert count / trials >= 0.85, (name, count)


def test_score_difference_has_an_interval_and_a_test():
    runs = _runs({"a": slow, "b": lambda n: slow(n) - 0.03, "c": slow}, seeds=8)
    table = score_differences(fit_learning_curves(runs, families=()), n_test=1000).set_index(["model_a", "model_b"])
    ab = table.loc[("a", "b")]
    assert ab["ci_low"] <= 0.03 <= ab["ci_high"] and ab["significant"]
    assert ab["ci_low"] > 0 and ab["p_t"] < 0.05  # interval and test agree
    assert not table.loc[("a", "c"), "significant"]


def test_predict_gives_an_interval_at_any_size_that_widens_beyond_the_data():
    curves = fit_learning_curves(_runs({"m": slow}), select="pow3")
    assert curves.curves["m"].rule == "pow3"  # a single family on request
    out = predict(curves, "m", [800, 1600, 3200, 6400])
    assert out["extrapolated"].tolist() == [False, False, True, True]
    assert out["extrapolation_factor"].tolist() == pytest.approx([1, 1, 2, 4])
    width = (out["ci_high"] - out["ci_low"]).to_numpy()
    assert width[3] > width[2] > width[1]
    assert (out["ci_low"] <= slow(out["n_train"])).all() and (slow(out["n_train"]) <= out["ci_high"]).all()
    with pytest.raises(KeyError, match="no fitted curve"):
        predict(curves, "other", 100)


def test_not_reached_only_when_the_plateau_is_below_the_target():
    curves = fit_learning_curves(_runs({"m": slow}), select="pow3")
    needed = data_needed(curves, [0.99]).set_index("target")
    assert needed.loc[0.99, "status"] == "not reached" and np.isinf(needed.loc[0.99, "n_star"])
    plateau = needed.loc[0.99, "plateau"]
    # just under the plateau: reached, but far beyond 1e4 x the largest size
    just_under = data_needed(curves, [plateau - 1e-6]).iloc[0]
    assert just_under["status"] == "beyond the search range" and np.isnan(just_under["n_star"])


def test_a_ratio_built_on_an_extrapolated_estimate_says_so():
    curves = fit_learning_curves(_runs({"fast": fast, "late": lambda n: 0.95 - 8.0 * n**-0.5}))
    row = data_ratios(curves, [0.79]).iloc[0]  # fast reaches 79% at 533 images, late at 2,500 (1.6x beyond)
    assert row["extrapolated"] and row["extrapolation_factor"] > 1.2
    assert "extrapolated" in row["sentence"] and "beyond the data" in row["sentence"]


def test_monotonicity_check_holds_its_error_and_finds_a_real_drop():
    # a flat curve with seed noise: no drop is called real
    flat = _runs({"f": lambda n: 0.7 + 0 * n}, seeds=5, noise=0.01, seed=3)
    assert monotonicity_problem(flat.assign(acc=flat["test_acc"])) == ""
    # a 4-point drop at one size, consistent over seeds: called, with its test
    drop = _runs({"d": lambda n: 0.8 - 0.04 * (n == 400)}, seeds=5, noise=0.004, seed=4)
    text = monotonicity_problem(drop.assign(acc=drop["test_acc"]))
    assert "falls from" in text and "at 200 images" in text and "Holm-adjusted" in text


def _study(runs: pd.DataFrame) -> StudyData:
    runs = runs.assign(
        status="done", run_id=np.arange(len(runs)), fraction=runs["n_train"] / runs["n_train"].max(), error=None
    )
    return StudyData("s", {}, {}, {"name": "toy"}, {}, runs, pd.DataFrame(), np.zeros(0, dtype=int))


def test_a_single_model_with_two_seeds_warns_with_the_seeds_needed():
    runs = _runs({"only": slow}, seeds=2)
    data = _study(runs)
    warnings = sanity_checks(data, fit_learning_curves(runs))
    rows = warnings[warnings["check"] == "too_few_seeds"]
    assert len(rows) == 1 and rows.iloc[0]["severity"] == "warning"
    assert "2 seeds per size" in rows.iloc[0]["message"] and "--seeds 5" in rows.iloc[0]["message"]
    five = sanity_checks(_study(_runs({"only": slow}, seeds=5)))
    assert not (five["check"] == "too_few_seeds").any()


def test_a_family_that_misfits_the_means_is_warned_about_and_its_band_widened():
    s_shaped = lambda n: 0.5 + 0.4 / (1 + (n / 400) ** -4)  # noqa: E731
    runs = _runs({"s": s_shaped}, seeds=6, noise=0.003, luck=0.003)
    curves = fit_learning_curves(runs, families=("pow3",), select="pow3")
    lof = curves.lack_of_fit.set_index("model").loc["s"]
    assert lof["p_value"] < 0.01 and lof["misfit_sd"] > 0.01 and "misses the measured means" in lof["warning"]
    warnings = sanity_checks(_study(runs), curves)
    assert (warnings["check"] == "lack_of_fit").any()


def _tied_top(n_test: int = 359) -> pd.DataFrame:
    """Accuracies rounded to 1 / n_test, as a study's are, with every seed scoring the same at
    the largest size (as ResNet-18 did on all 1,151 digits)."""
    runs = _runs({"tied": slow}, seeds=3, seed=4)
    top = runs["n_train"] == runs["n_train"].max()
    runs.loc[top, "test_acc"] = runs.loc[top, "test_acc"].mean()
    runs["test_acc"] = np.round(runs["test_acc"] * n_test) / n_test
    return runs


def test_seeds_that_tie_at_a_size_are_floored_at_the_test_sets_rounding_not_divided_by():
    runs = _tied_top()
    lof = fit_learning_curves(runs, n_test=359).lack_of_fit.set_index("model").loc["tied"]
    assert np.isfinite(lof["f_stat"]) and lof["f_stat"] < 1e4  # a zero spread gave chi2 ~ 1e26
    assert "e+" not in lof["warning"]
    unfloored = fit_learning_curves(runs).lack_of_fit.set_index("model").loc["tied"]
    assert np.isfinite(unfloored["f_stat"])  # the other sizes' spread is pooled: one tied size is no problem


@pytest.mark.parametrize("which", ["s_shaped", "tied"])
def test_the_band_is_widened_until_the_misfit_explains_the_lack_of_fit_statistic(which):
    s_shaped = lambda n: 0.5 + 0.4 / (1 + (n / 400) ** -4)  # noqa: E731
    runs = _runs({which: s_shaped}, seeds=6, noise=0.003, luck=0.003) if which == "s_shaped" else _tied_top()
    curves = fit_learning_curves(runs, families=("pow3",), select="pow3", n_test=359)
    lof = curves.lack_of_fit.set_index("model").loc[which]
    s = curves.summary[curves.summary["model"] == which].sort_values("n_train")
    resid = s["mean"].to_numpy() - predict(curves, which, s["n_train"].to_numpy())["fit"].to_numpy()
    k = s["n_seeds"].to_numpy()
    sd = np.maximum(s["std"].to_numpy(), 1 / (359 * np.sqrt(12)))
    pooled = np.sum((k - 1) * sd**2) / np.sum(k - 1)
    assert lof["df_error"] == np.sum(k - 1)
    assert lof["f_stat"] == pytest.approx(np.sum(k * resid**2) / lof["df"] / pooled)
    assert lof["p_value"] == pytest.approx(stats.f.sf(lof["f_stat"], lof["df"], lof["df_error"]))
    if lof["p_value"] < 0.01:  # with the misfit added to the noise, the statistic no longer exceeds its df
        assert np.sum(resid**2 / (pooled / k + lof["misfit_sd"] ** 2)) <= lof["df"] + 1e-6
        assert lof["misfit_sd"] > 0


def test_the_lack_of_fit_test_keeps_its_level_on_data_from_the_fitted_family():
    # pow3 data, 6 sizes, 3 seeds: reading sum t^2 against chi2 warned in about a third of these
    # studies (each size's spread has 2 df); the F test with pooled pure error, about 1%
    rng = np.random.default_rng(11)
    sizes = np.array([100, 200, 400, 800, 1600, 3200])
    alarms = 0
    for _ in range(100):
        rows = [
            {"model": "m", "seed": s, "n_train": int(n), "test_acc": 0.9 - 0.125 * (n / 1000) ** -0.5 + e}
            for s in range(3)
            for n, e in zip(sizes, rng.normal(0, 0.015, len(sizes)))
        ]
        lof = fit_learning_curves(pd.DataFrame(rows), families=("pow3",), select="pow3").lack_of_fit.iloc[0]
        alarms += bool(lof["p_value"] < 0.01)
    assert alarms <= 4
