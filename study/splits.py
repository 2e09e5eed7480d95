"""Fixed splits and nested, stratified training subsets.

- test: the dataset's official held-out split, or a fixed stratified part of it;
- validation: a fixed stratified part of what remains (tuning and early stopping only);
- pool: the rest; each seed draws nested subsets from it.

Test and validation depend on the data alone (a fixed seed), never on the run's seed, so
every run of a study is scored on the same images; with ``data.split_per_seed`` each seed draws
its own stratified test and validation split instead (``split_seed``), its subsets nested
within its own pool, and the leak check runs on each seed's split. Exact duplicate images across splits are
found by content hash and dropped from the training side, so a test image never leaks.

The allocation is per class, written here rather than taken from scikit-learn's
StratifiedShuffleSplit: that splitter allocates by overall proportions and can leave a rare
class out of a split, where we need every class in every split and subsets that nest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from study.errors import UserError

SPLIT_SEED = 1_234_567  # fixed: test and validation never move with the run's seed


@dataclass
class Splits:
    """Indices into the dataset. ``pool`` is what the subsets of every seed are drawn from."""

    test: np.ndarray
    val: np.ndarray
    pool: np.ndarray
    dropped_duplicates: int = 0  # training-side images dropped because test or val held a copy
    duplicate_groups: int = 0  # distinct duplicated contents within and across splits
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Sizes and leakage checks, for the store and the report's methods section."""
        return {
            "n_test": int(len(self.test)),
            "n_val": int(len(self.val)),
            "n_pool": int(len(self.pool)),
            "dropped_duplicates": int(self.dropped_duplicates),
            "duplicate_groups": int(self.duplicate_groups),
            "warnings": list(self.warnings),
        }


def content_hashes(images: np.ndarray) -> np.ndarray:
    """A 128-bit digest of each image's pixels, as an array of 16-byte strings."""
    return np.array(
        [hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=16).digest() for img in images], dtype="S16"
    )


def _per_class_take(labels: np.ndarray, rng: np.random.Generator, count) -> tuple[np.ndarray, np.ndarray]:
    """For each class, a seeded permutation; the first ``count(c, n_c)`` indices are taken."""
    taken, rest = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        k = count(c, len(members))
        taken.append(members[:k])
        rest.append(members[k:])
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


def make_splits(
    labels: np.ndarray,
    class_names: list[str],
    test_fraction: float,
    val_fraction: float,
    min_per_class: int,
    test_mask: np.ndarray | None = None,
    hashes: np.ndarray | None = None,
    reserved: np.ndarray | None = None,
    split_seed: int | None = None,
) -> Splits:
    """Fixed test / validation / pool split of a dataset, checked for leakage. ``reserved``
    (dataset indices, e.g. the images of subset lists) stay in the pool: test and validation
    are drawn from the other images (with none reserved, the draws are the same as ever).
    ``split_seed``: a run seed's own split (``data.split_per_seed``; seed 0's is the fixed one);
    None: the fixed split.
    An official test split (``test_mask``) stays the test set; only validation moves then.

    Raises UserError when a class has too few images to appear in all three parts with at
    least ``min_per_class`` images left for training.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(SPLIT_SEED if split_seed is None else [SPLIT_SEED, int(split_seed)])
    all_idx = np.arange(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    if reserved is not None:
        keep[np.asarray(reserved, dtype=np.int64)] = True
    if test_mask is not None:
        test, train_side = all_idx[test_mask], all_idx[~test_mask]
    else:
        _require_sizes(labels, class_names, min_per_class, test_fraction, val_fraction)
        free = all_idx[~keep]
        t, r = _per_class_take(labels[free], rng, lambda c, n: max(1, round(test_fraction * n)))
        test, train_side = free[t], np.union1d(free[r], all_idx[keep])
    _require_sizes(labels[train_side], class_names, min_per_class, None, val_fraction, train_side_only=True)
    free = train_side[~keep[train_side]]
    v, p = _per_class_take(labels[free], rng, lambda c, n: max(1, round(val_fraction * n)))
    val, pool = free[v], np.union1d(free[p], train_side[keep[train_side]])

    splits = Splits(test=test, val=val, pool=pool)
    if hashes is not None:
        _drop_leaks(splits, hashes)
        if len(np.unique(labels[splits.pool])) < len(class_names):
            raise UserError(
                "after dropping images that duplicate test or validation images, a class has no training image left"
            )
    return splits


def _require_sizes(labels, class_names, min_per_class, test_fraction, val_fraction, train_side_only=False) -> None:
    """Refuse classes too small to split, naming the smallest and the count needed."""
    counts = np.bincount(labels, minlength=len(class_names))
    needed = min_per_class + 1 + (0 if train_side_only else 1)
    for c in np.argsort(counts, kind="stable"):
        n = int(counts[c])
        if n < needed:
            parts = "train and validation" if train_side_only else "train, validation and test"
            raise UserError(
                f"class {class_names[c]!r} has {n} image(s); at least {needed} are needed to split it into {parts} "
                f"with data.min_per_class={min_per_class} training images"
            )
        break  # argsort: the smallest class decides


def _drop_leaks(splits: Splits, hashes: np.ndarray) -> None:
    """Drop training-side copies of test or validation images (and pool copies of val)."""
    test_h = set(hashes[splits.test].tolist())
    val_keep = np.array([hashes[i] not in test_h for i in splits.val], dtype=bool)
    guarded = test_h | set(hashes[splits.val[val_keep]].tolist())
    pool_keep = np.array([hashes[i] not in guarded for i in splits.pool], dtype=bool)
    dropped = int((~val_keep).sum() + (~pool_keep).sum())
    splits.val, splits.pool = splits.val[val_keep], splits.pool[pool_keep]
    _, counts = np.unique(hashes, return_counts=True)
    splits.duplicate_groups = int((counts > 1).sum())
    splits.dropped_duplicates = dropped
    if dropped:
        splits.warnings.append(
            f"{dropped} training/validation image(s) were exact copies of held-out images and were dropped to "
            "prevent leakage"
        )
    elif splits.duplicate_groups:
        splits.warnings.append(f"{splits.duplicate_groups} image(s) occur more than once within a split")
    overlap = check_disjoint(hashes, splits)
    assert not overlap, f"leak check failed after dropping duplicates: {overlap}"  # invariant, not user input


def check_disjoint(hashes: np.ndarray, splits: Splits) -> dict[str, int]:
    """Number of shared image contents between each pair of splits (all zero when disjoint)."""
    sets = {name: set(hashes[getattr(splits, name)].tolist()) for name in ("pool", "val", "test")}
    return {
        f"{a}&{b}": len(sets[a] & sets[b])
        for a, b in (("pool", "val"), ("pool", "test"), ("val", "test"))
        if sets[a] & sets[b]
    }


def nested_stratified(
    labels: np.ndarray, fractions: list[float], seed: int, min_per_class: int = 1
) -> dict[float, np.ndarray]:
    """Nested stratified subsets of ``labels``' positions, one per fraction.

    Per class, one permutation seeded by ``seed``; fraction f takes its first
    ``max(min_per_class, round(f * n_c))`` members (never more than n_c). The same seed thus
    gives 10% subset of 25% subset of 50% ..., every class present in each.
    """
    labels = np.asarray(labels)
    order = _class_orders(labels, seed)
    out = {}
    for f in fractions:
        take = [members[: min(len(members), max(min_per_class, round(f * len(members))))] for members in order]
        out[f] = np.sort(np.concatenate(take))
    return out


def per_class_subsets(
    labels: np.ndarray, counts: list[int], seed: int, class_names: list[str] | None = None
) -> dict[int, np.ndarray]:
    """Nested subsets with exactly k images of every class; refuses k above a class's size."""
    labels = np.asarray(labels)
    order = _class_orders(labels, seed)
    out = {}
    for k in counts:
        for c, members in zip(np.unique(labels), order):
            if k > len(members):
                name = class_names[c] if class_names else str(c)
                raise UserError(
                    f"per_class {k} is more than class {name!r} has in the training pool ({len(members)}); use at "
                    f"most {len(members)}"
                )
        out[k] = np.sort(np.concatenate([members[:k] for members in order]))
    return out


def _class_orders(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 0x5EED])
    return [np.flatnonzero(labels == c)[rng.permutation(int((labels == c).sum()))] for c in np.unique(labels)]


def training_subset(
    splits: Splits, labels: np.ndarray, kind: str, value: float, seed: int, min_per_class: int, class_names=None
) -> np.ndarray:
    """Dataset indices of the training subset of one cell ('fraction' or 'per_class')."""
    pool_labels = np.asarray(labels)[splits.pool]
    if kind == "fraction":
        positions = nested_stratified(pool_labels, [value], seed, min_per_class)[value]
    elif kind == "per_class":
        positions = per_class_subsets(pool_labels, [int(value)], seed, class_names)[int(value)]
    else:
        raise ValueError(f"unknown size kind {kind!r}")
    return splits.pool[positions]
