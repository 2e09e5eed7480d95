import numpy as np
import pytest

from study.errors import UserError
from study.splits import check_disjoint, content_hashes, make_splits, nested_stratified, per_class_subsets

LABELS = np.repeat(np.arange(5), [40, 30, 20, 10, 7])
FRACTIONS = [0.1, 0.25, 0.5, 1.0]


def test_fractions_are_nested_for_each_seed():
    for seed in range(3):
        subsets = nested_stratified(LABELS, FRACTIONS, seed, min_per_class=2)
        for small, large in zip(FRACTIONS, FRACTIONS[1:]):
            assert set(subsets[small]) < set(subsets[large])
        assert len(subsets[1.0]) == len(LABELS)


def test_every_class_present_with_counts_as_specified():
    subsets = nested_stratified(LABELS, FRACTIONS, seed=0, min_per_class=2)
    counts = np.bincount(LABELS)
    for f, idx in subsets.items():
        got = np.bincount(LABELS[idx], minlength=5)
        expected = [min(n, max(2, round(f * n))) for n in counts]
        assert got.tolist() == expected


def test_different_seeds_draw_different_subsets_and_same_seed_repeats():
    a = nested_stratified(LABELS, [0.25], seed=0)[0.25]
    b = nested_stratified(LABELS, [0.25], seed=1)[0.25]
    again = nested_stratified(LABELS, [0.25], seed=0)[0.25]
    assert not np.array_equal(a, b)
    assert np.array_equal(a, again)


def test_per_class_gives_exactly_k_per_class_and_refuses_too_many():
    subsets = per_class_subsets(LABELS, [3, 7], seed=0)
    assert np.bincount(LABELS[subsets[3]]).tolist() == [3] * 5
    assert set(subsets[3]) < set(subsets[7])
    with pytest.raises(UserError, match=r"per_class 8 is more than class '4' has"):
        per_class_subsets(LABELS, [8], seed=0)


def test_splits_are_disjoint_stratified_and_fixed():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (len(LABELS), 4, 4, 3), dtype=np.uint8)
    names = [str(c) for c in range(5)]
    s1 = make_splits(LABELS, names, 0.2, 0.2, 2, hashes=content_hashes(images))
    s2 = make_splits(LABELS, names, 0.2, 0.2, 2, hashes=content_hashes(images))
    assert np.array_equal(s1.test, s2.test) and np.array_equal(s1.val, s2.val)
    assert not (set(s1.test) & set(s1.val)) and not (set(s1.test) & set(s1.pool)) and not (set(s1.val) & set(s1.pool))
    assert len(s1.test) + len(s1.val) + len(s1.pool) == len(LABELS)
    for part in (s1.test, s1.val, s1.pool):
        assert set(LABELS[part]) == set(range(5))  # every class in every split
    assert check_disjoint(content_hashes(images), s1) == {}


def test_duplicate_of_a_test_image_is_dropped_from_training_and_reported():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (len(LABELS), 4, 4, 3), dtype=np.uint8)
    names = [str(c) for c in range(5)]
    plain = make_splits(LABELS, names, 0.2, 0.2, 2, hashes=content_hashes(images))
    leak_source, leak_target = plain.test[0], plain.pool[0]
    images[leak_target] = images[leak_source]  # a training image that is a copy of a test image
    hashes = content_hashes(images)
    split = make_splits(LABELS, names, 0.2, 0.2, 2, hashes=hashes)
    assert leak_target not in split.pool
    assert split.dropped_duplicates == 1
    assert check_disjoint(hashes, split) == {}
    assert "dropped to prevent leakage" in split.warnings[0]


def test_official_test_split_is_kept():
    mask = np.zeros(len(LABELS), bool)
    mask[::5] = True
    split = make_splits(LABELS, [str(c) for c in range(5)], 0.2, 0.2, 2, test_mask=mask)
    assert np.array_equal(split.test, np.flatnonzero(mask))


def test_class_too_small_to_split_is_refused_naming_it():
    labels = np.repeat([0, 1], [20, 3])
    with pytest.raises(UserError, match=r"class 'rare' has 3 image\(s\); at least 4 are needed"):
        make_splits(labels, ["common", "rare"], 0.2, 0.2, 2)
