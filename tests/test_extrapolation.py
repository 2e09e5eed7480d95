"""Extrapolation beyond the largest measured size: known-answer tests of the point and the band
(analysis.bands, Curve.point / Curve.interval)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from analysis.bands import band_half_width, damped_gain, last_doubling_gain, point_beyond
from analysis.curves import fit_learning_curves, predict

SIZES = np.array([100, 200, 400, 800, 1600])


def _runs(f, seeds: int = 5, noise: float = 0.005, sizes=SIZES) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = [
        {"model": "m", "seed": s, "n_train": int(n), "test_acc": float(f(n) + rng.normal(0, noise))}
        for s in range(seeds)
        for n in sizes
    ]
    return pd.DataFrame(rows)


def test_last_doubling_gain_reads_a_constant_gain_per_doubling():
    sizes = np.array([100, 141, 200, 283, 400])
    means = 0.6 + 0.02 * np.log2(sizes / 100)
    assert last_doubling_gain(sizes, means) == pytest.approx(0.02, abs=1e-9)
    assert last_doubling_gain(np.array([100]), np.array([0.5])) == 0.0


def test_damped_gain_adds_the_gain_then_its_damped_repeats():
    assert damped_gain(0.7, 0.02, np.array([1.0]), damping=0.5)[0] == pytest.approx(0.72)
    assert damped_gain(0.7, 0.02, np.array([2.0]), damping=0.5)[0] == pytest.approx(0.73)
    assert damped_gain(0.7, 0.02, np.array([2.0]), damping=1.0)[0] == pytest.approx(0.74)
    assert damped_gain(0.99, 0.05, np.array([3.0]))[0] == 1.0  # clipped to an accuracy


def test_constant_gain_per_doubling_is_predicted_at_twice_the_largest_size():
    # acc = 0.6 + 0.03 log2(n / 100): the damped gain and a log-like fit both continue it
    curves = fit_learning_curves(_runs(lambda n: 0.6 + 0.03 * np.log2(n / 100)))
    out = predict(curves, "m", [3200])
    assert out["fit"].iloc[0] == pytest.approx(0.6 + 0.03 * 5, abs=0.01)
    assert out["ci_low"].iloc[0] <= 0.75 <= out["ci_high"].iloc[0]


def test_band_grows_with_the_doublings_beyond_the_largest_size():
    curves = fit_learning_curves(_runs(lambda n: 0.9 - 2.0 * n**-0.5))
    out = predict(curves, "m", [1600, 3200, 6400, 12800])
    width = (out["ci_high"] - out["ci_low"]).to_numpy()
    assert np.all(np.diff(width) > 0)
    assert list(out["extrapolated"]) == [False, True, True, True]


def test_disagreement_is_zero_inside_and_when_the_predictors_agree():
    curves = fit_learning_curves(_runs(lambda n: 0.9 - 2.0 * n**-0.5))
    curve = curves.curves["m"]
    assert np.all(curve.disagreement_sd([100, 800, 1600]) == 0)
    agree = dataclasses.replace(curve, last_mean=float(curve.predict(1600)[0]))
    agree.gain_per_doubling = 0.0
    gain_at = damped_gain(agree.last_mean, 0.0, np.array([1.0]))
    spread = agree.disagreement_sd([3200])[0]
    assert spread == pytest.approx(abs(float(curve.predict(3200)[0]) - gain_at[0]) / 2)
    # with no disagreement the term adds nothing to the band
    base = band_half_width(np.array([0.01]), 0.0, np.array([1.0]), np.array([0.0]), disagreement_sd=1.0)
    same = band_half_width(np.array([0.01]), 0.0, np.array([1.0]), np.array([0.0]), disagreement_sd=0.0)
    assert base[0] == pytest.approx(same[0])
    wider = band_half_width(np.array([0.01]), 0.0, np.array([1.0]), np.array([0.02]), disagreement_sd=1.0)
    assert wider[0] > base[0]


def test_point_beyond_rules():
    a, b = np.array([0.8]), np.array([0.84])
    assert point_beyond(a, b, "curve")[0] == 0.8
    assert point_beyond(a, b, "gain")[0] == 0.84
    assert point_beyond(a, b, "blend")[0] == pytest.approx(0.82)
    with pytest.raises(ValueError):
        point_beyond(a, b, "median")


def test_band_never_leaves_the_accuracy_range():
    # a curve near 100%, seeds that disagree a lot: the band is clipped to [0, 1]
    curves = fit_learning_curves(_runs(lambda n: 0.995 - 0.5 * n**-0.7, noise=0.02))
    out = predict(curves, "m", np.geomspace(50, 1600 * 16, 30))
    assert out["ci_low"].min() >= 0.0 and out["ci_high"].max() <= 1.0
    assert np.all(out["ci_low"] <= out["fit"]) and np.all(out["fit"] <= out["ci_high"])


def test_images_needed_beyond_the_data_is_read_off_the_reported_point_inside_its_interval():
    from analysis.efficiency import data_needed

    # still gaining 3 points per doubling at 1,600 images: a target the point reaches at about 2x
    curves = fit_learning_curves(_runs(lambda n: 0.6 + 0.03 * np.log2(n / 100)))
    curve = curves.curves["m"]
    target = float(curve.point(np.array([3000.0]))[0])
    row = data_needed(curves, [target]).iloc[0]
    assert row["n_star"] == pytest.approx(3000, rel=0.01) and row["extrapolated"]
    assert row["ci_low"] < row["n_star"] < row["ci_high"]
    # where the families' curve and the reported point differ beyond the data, n* follows the point
    assert abs(curve.predict(np.array([row["n_star"]]))[0] - target) > abs(
        curve.point(np.array([row["n_star"]]))[0] - target
    )
