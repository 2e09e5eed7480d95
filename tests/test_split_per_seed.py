"""Splits as a source of variance (``--split-per-seed``): each seed its own stratified, leak-checked
test and validation split, subsets nested within its own pool; the report names the design and
splits the variance; McNemar and the confusion counts score each run against its own labels."""

import numpy as np
import pytest

from analysis.load import load_study
from analysis.population import NESTED
from analysis.split_variance import item_sampling_variance, split_variance
from analysis.study_analysis import analyse
from study.config import StudyConfig, from_dict
from study.errors import UserError
from study.splits import check_disjoint, content_hashes, make_splits, training_subset
from tests.conftest import FAST_MODEL

LABELS = np.repeat(np.arange(4), [40, 30, 24, 16])
NAMES = [str(c) for c in range(4)]


def _images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (len(labels), 4, 4, 3), dtype=np.uint8)


def test_each_seed_draws_its_own_stratified_disjoint_split_and_nested_subsets():
    images = _images(LABELS)
    hashes = content_hashes(images)
    fixed = make_splits(LABELS, NAMES, 0.2, 0.2, 2, hashes=hashes)
    per_seed = {s: make_splits(LABELS, NAMES, 0.2, 0.2, 2, hashes=hashes, split_seed=s) for s in range(3)}
    again = make_splits(LABELS, NAMES, 0.2, 0.2, 2, hashes=hashes, split_seed=1)
    assert np.array_equal(again.test, per_seed[1].test) and np.array_equal(again.val, per_seed[1].val)
    tests = [set(sp.test.tolist()) for sp in per_seed.values()]
    assert len({frozenset(t) for t in tests}) == 3  # every seed its own test set
    assert tests[0] == set(fixed.test.tolist())  # seed 0's split is the fixed one: a fixed-split study's seed 0
    counts = np.bincount(LABELS[fixed.test], minlength=4)
    for seed, sp in per_seed.items():
        # Stratified: the same images per class as the fixed split; every class in every part.
        assert np.bincount(LABELS[sp.test], minlength=4).tolist() == counts.tolist()
        for part in (sp.test, sp.val, sp.pool):
            assert set(LABELS[part]) == set(range(4))
        assert check_disjoint(hashes, sp) == {}
        assert len(sp.test) + len(sp.val) + len(sp.pool) == len(LABELS)
        subsets = [training_subset(sp, LABELS, "fraction", f, seed, 2) for f in (0.25, 0.5, 1.0)]
        assert set(subsets[0]) < set(subsets[1]) < set(subsets[2]) <= set(sp.pool.tolist())


def test_leak_check_runs_on_each_seeds_split():
    images = _images(LABELS, 1)
    images[5] = images[50]  # two copies of one image, in different classes' ranges
    hashes = content_hashes(images)
    for seed in range(4):
        sp = make_splits(LABELS, NAMES, 0.2, 0.2, 2, hashes=hashes, split_seed=seed)
        assert check_disjoint(hashes, sp) == {}
        held = set(sp.test.tolist()) | set(sp.val.tolist())
        if held & {5, 50}:  # a copy held out: its twin is not trained on
            assert not ({5, 50} - held) & set(sp.pool.tolist())


def test_official_test_split_stays_and_only_validation_moves():
    mask = np.zeros(len(LABELS), bool)
    mask[::5] = True
    a = make_splits(LABELS, NAMES, 0.2, 0.2, 2, test_mask=mask, split_seed=0)
    b = make_splits(LABELS, NAMES, 0.2, 0.2, 2, test_mask=mask, split_seed=1)
    assert np.array_equal(a.test, b.test) and not np.array_equal(a.val, b.val)


def test_split_per_seed_with_tuning_is_refused():
    cfg = from_dict(StudyConfig, {"data": {"split_per_seed": True}, "tune": {"trials": 3}}, "")
    with pytest.raises(UserError, match="data.split_per_seed=true with tune.trials=3 is not supported"):
        cfg.validate()


def test_item_sampling_variance_is_the_stratified_binomial_one():
    y = np.repeat([0, 1], [50, 50])
    pred = y.copy()
    pred[:10] = 1  # class 0: 40 of 50 right; class 1: all right
    p = 0.8
    expected = (0.5**2) * (50 / 49 * p * (1 - p)) / 50
    assert item_sampling_variance(y, pred) == pytest.approx(expected)
    # Drawn from 100 images per class: the finite-population correction halves it.
    assert item_sampling_variance(y, pred, np.array([100, 100])) == pytest.approx(expected / 2)


@pytest.mark.slow
def test_tiny_study_with_split_per_seed_reports_its_design(tmp_path):
    from tests.conftest import run_subprocess

    out = tmp_path / "o"
    small = ["--models", f"{FAST_MODEL},test_efficientnet", "--image-size", "16", "--budget", "fixed"]
    small += ["--no-budget-control", "--epochs", "1", "--min-steps", "2"]
    proc = run_subprocess(
        "run", "--out", out, *small, "--threads", "1", "--quiet", "--fractions", "0.5,1.0", "--seeds", "3",
        "--split-per-seed", "--no-deploy", "--no-costs",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = load_study(f"sqlite:///{out / 'study.db'}")
    assert data.split_per_seed and len(data.y_true) == len(data.done) == 12
    by_seed = data.done.groupby("seed")["run_id"].first()
    labels = [data.labels_of(r) for r in by_seed]
    assert len({lab.tobytes() for lab in labels}) == 3  # each seed scored on its own test images
    assert all(np.array_equal(np.bincount(lab), np.bincount(labels[0])) for lab in labels)  # stratified alike
    variance = split_variance(data)
    assert len(variance) == 4 and (variance["share_test"] <= 1).all() and (variance["sd_test_sampling"] > 0).all()
    report = (out / "report" / "report.md").read_text()
    assert "Splits (design: one split per seed)" in report
    assert "How much of the variance the split explains" in report
    # the main table's interval: items nested in seeds, each run scored on its own split's labels
    pop = analyse(data).population
    assert (pop["method"] == NESTED).all() and (pop["ci_low"] < pop["ci_high"]).all()
    assert "over seeds each seed on its own test split" in report and "on this test set" not in report
