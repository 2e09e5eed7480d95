"""Planning and opening a study, before any training starts: the decoded dataset, the fixed
splits, the planned cells and tuning jobs, the settings fingerprint and the study's row in the
store (``open_context``); and what each worker process holds while it works (``WorkerState``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from study import splits as splitting
from study import subsets
from study.checks import check_device, check_out
from study.config import StudyConfig, to_dict
from study.datasets import Dataset, check_name, load_dataset
from study.datasets.cache import cached_hashes
from study.errors import UserError
from study.masking import masked_url
from study.store import (
    LIST_SHA256,
    UNFINGERPRINTED,
    Cell,
    Store,
    optuna_storage,
    settings_fingerprint,
    tuning_study_name,
)

if TYPE_CHECKING:
    import torch

    from study.images import ImageSource
    from study.speed import Speed


@dataclass
class StudyContext:
    cfg: StudyConfig
    dataset: Dataset
    splits: splitting.Splits
    store: Store
    study_id: int
    cells: list[Cell]
    warnings: list[str] = field(default_factory=list)
    lists: list[np.ndarray] = field(default_factory=list)  # dataset indices of each of cfg.subset_lists
    hashes: np.ndarray | None = None  # content hashes: each seed's split is leak-checked with them
    seed_splits: dict[int, splitting.Splits] = field(default_factory=dict)  # data.split_per_seed, drawn once

    def splits_for(self, seed: int) -> splitting.Splits:
        """The split a run of ``seed`` trains, validates and tests on: the study's fixed split, or
        with ``data.split_per_seed`` the seed's own (drawn once, leak-checked)."""
        if not self.cfg.data.split_per_seed:
            return self.splits
        if seed not in self.seed_splits:
            self.seed_splits[seed] = seed_split(self.cfg, self.dataset, self.hashes, self.lists, seed)
        return self.seed_splits[seed]

    def train_indices(self, cell: Cell) -> np.ndarray:
        """Dataset indices of the training subset of ``cell``."""
        if cell.size_kind == subsets.KIND:
            return self.lists[int(cell.size_value)]
        return splitting.training_subset(
            self.splits_for(cell.seed),
            self.dataset.labels,
            cell.size_kind,
            cell.size_value,
            cell.seed,
            self.cfg.data.min_per_class,
            self.dataset.class_names,
        )


@dataclass
class WorkerState:
    """What one worker process holds for a study, loaded once and reused by its runs and trials."""

    ctx: StudyContext
    data: ImageSource  # the cache's memory map; each run takes its images from it, resident or streamed
    device: torch.device
    speed: Speed  # layout and compilation, for every run of this worker


def plan_cells(cfg: StudyConfig) -> list[Cell]:
    """The study's cells: every arm x size x seed, smallest sizes first."""
    return [
        Cell(arm.model, kind, value, seed, arm.name)
        for kind, value in cfg.sizes
        for arm in cfg.study_arms
        for seed in range(cfg.seeds)
    ]


def check_models(cfg: StudyConfig) -> None:
    """Refuse unknown model names before any data is decoded (imports timm, not the models)."""
    from study.models import check_model_name

    for name in cfg.models:
        check_model_name(name)


def check_transfer(cfg: StudyConfig) -> list[str]:
    """Make sure every arm's model can start from the weights its settings ask for (fetching
    timm's into its cache when online), before any data is decoded; returns warnings."""
    from study.models import preflight

    if not cfg.arms:  # one arm per model, all with the study's [train]
        return preflight(cfg.models, cfg.train, cfg.data.image_size)
    warnings: list[str] = []
    for arm in cfg.arms:
        try:
            found = preflight([arm.model], arm.train(cfg.train), cfg.data.image_size)
        except UserError as exc:
            raise UserError(f"arm {arm.name!r}: {exc}") from None
        warnings += [f"arm {arm.name!r}: {w}" for w in found]
    return warnings


def check_classes(cfg: StudyConfig) -> None:
    """Refuse a dataset of one class before anything is decoded or written: a classifier needs
    two. An image folder is judged by its class folders; a ``[[datasets]]`` entry is named."""
    if cfg.data.dataset != "imagefolder" or not cfg.data.root:
        return
    from study.datasets.imagefolder import check_classes as check_folders

    try:
        check_folders(Path(cfg.data.root))
    except UserError as exc:
        if not cfg.group:
            raise
        entry = cfg.name[len(cfg.group) + 1 :]
        raise UserError(f"dataset {entry!r}: {str(exc).replace('data.', '')}") from None


def load_data(cfg: StudyConfig) -> tuple[Dataset, splitting.Splits, np.ndarray]:
    """Decode (or memory-map) the dataset and make its fixed, leak-checked splits."""
    dataset, splits, hashes, _ = load_data_and_lists(cfg)
    return dataset, splits, hashes


def load_data_and_lists(cfg: StudyConfig) -> tuple[Dataset, splitting.Splits, np.ndarray, list[np.ndarray]]:
    """``load_data``, and the dataset indices of each of ``cfg.subset_lists`` (kept in the pool)."""
    check_name(cfg.data.dataset)
    dataset = load_dataset(cfg.data, cfg.cache_path)
    if dataset.num_classes < 2:  # any dataset, whatever its source: a classifier needs two classes
        raise UserError(
            f"data.dataset={cfg.data.dataset!r} has {dataset.num_classes} class(es); a classifier needs at least 2"
        )
    hashes = cached_hashes(dataset)  # kept beside the cache: a worker does not read every image for them
    train_side = np.flatnonzero(~dataset.test_mask) if dataset.test_mask is not None else np.arange(len(dataset))
    lists = [subsets.resolve(path, dataset.names, train_side) for path in cfg.subset_lists]
    splits = _split(cfg, dataset, hashes, lists, None)
    kept = []
    for path, indices in zip(cfg.subset_lists, lists):
        in_pool = np.intersect1d(indices, splits.pool)
        if len(in_pool) < len(indices):  # exact copies of held-out images, dropped from the pool
            splits.warnings.append(
                f"subset list {subsets.list_name(path)}: {len(indices) - len(in_pool)} image(s) are exact copies of "
                "test or validation images and were left out to prevent leakage"
            )
        kept.append(in_pool)
    return dataset, splits, hashes, kept


def _split(
    cfg: StudyConfig, dataset: Dataset, hashes: np.ndarray, lists: list[np.ndarray], seed: int | None
) -> splitting.Splits:
    """The leak-checked split of the data: the fixed one (``seed`` None) or a seed's own."""
    return splitting.make_splits(
        dataset.labels,
        dataset.class_names,
        cfg.data.test_fraction,
        cfg.data.val_fraction,
        cfg.data.min_per_class,
        dataset.test_mask,
        hashes,
        reserved=np.concatenate(lists) if lists else None,
        split_seed=seed,
    )


def seed_split(
    cfg: StudyConfig, dataset: Dataset, hashes: np.ndarray, lists: list[np.ndarray], seed: int
) -> splitting.Splits:
    """Seed ``seed``'s own split (``data.split_per_seed``): stratified test and validation drawn
    with the seed, subset lists kept in its pool (the images of a list that copy its held-out
    images left out, as for the fixed split)."""
    splits = _split(cfg, dataset, hashes, lists, seed)
    for indices in lists:
        if len(np.intersect1d(indices, splits.pool)) < len(indices):
            raise UserError(
                f"with data.split_per_seed, seed {seed}'s test or validation split holds exact copies of subset-list "
                "images; use one split for every seed (data.split_per_seed = false)"
            )
    return splits


def study_settings(cfg: StudyConfig, content_digest: str) -> dict:
    """The settings every run of one study must share: results under other settings would not
    be comparable. Models, sizes and seeds are not among them: they only add cells. ``arms``
    holds each arm's own settings (its model and keys); ``study_fingerprint`` leaves it out, so
    that a new arm only adds cells, and the store refuses an arm whose settings changed."""
    data = to_dict(cfg.data)
    for local_only in ("root", "test_root", "cache_dir"):  # where the data lies is not what it is
        data.pop(local_only)
    if not data["split_per_seed"]:  # studies with one fixed split keep their fingerprint
        data.pop("split_per_seed")
    from study.transfer import file_digest

    train = to_dict(cfg.train)
    # A weights file counts by its content, not by where it lies.
    train["weights"] = {model: file_digest(path) for model, path in sorted(cfg.train.weight_files.items())}
    settings = {"data": data, "content": content_digest, "train": train, "arms": arm_settings(cfg)}
    if cfg.subset_lists:  # what each list selects; studies without lists keep their fingerprint
        settings["subset_lists"] = [[subsets.list_name(p), subsets.list_digest(p)] for p in cfg.subset_lists]
        # Each list's file as its publisher checks it (the report's Methods print it); not fingerprinted.
        settings[LIST_SHA256] = {subsets.list_name(p): subsets.list_sha256(p) for p in cfg.subset_lists}
    if cfg.tune.trials:  # tuned hyper-parameters replace [train]'s; untuned studies keep their fingerprint
        tune = to_dict(cfg.tune)
        tune.pop("timeout")  # a time budget, like jobs: it does not define what is compared
        settings["tune"] = tune
    return settings


def arm_settings(cfg: StudyConfig) -> dict[str, dict]:
    """Per arm, what defines it: its model and its own keys (a weights file by its content)."""
    from study.transfer import file_digest

    arms = {}
    for arm in cfg.study_arms:
        keys = dict(arm.overrides)
        if keys.get("weights"):
            keys["weights"] = file_digest(keys["weights"])
        arms[arm.name] = {"model": arm.model, **keys}
    return arms


def study_fingerprint(settings: dict) -> str:
    """The fingerprint of a study's shared settings: all of ``study_settings`` but its arms and
    the lists' file checksums (``subset_lists`` holds what each list selects)."""
    return settings_fingerprint({k: v for k, v in settings.items() if k not in UNFINGERPRINTED})


def plan_tuning(cfg: StudyConfig) -> list[tuple[str, str, str, float, str]]:
    """The study's tuning jobs, one per (arm, size): (optuna study name, model, kind, value, arm)."""
    if not cfg.tune.trials:
        return []
    return [
        (tuning_study_name(cfg.name, arm.name, kind, value), arm.model, kind, value, arm.name)
        for kind, value in cfg.sizes
        for arm in cfg.study_arms
    ]


CREATE, JOIN, ATTACH = "create", "join", "attach"  # how open_context meets the study in the store


def open_context(cfg: StudyConfig, mode: str = CREATE) -> StudyContext:
    """Load and check everything (config, out folder, device, weights, data), and only then
    meet the study in the store:

    - ``create`` (``study run``): record the study, or reopen it with the same settings, and add
      its cells and tuning jobs;
    - ``join`` (``study worker``): the study must exist with the settings and data this machine
      has (the same fingerprint); nothing is added;
    - ``attach`` (a worker process of a command that already did one of the above): look the
      study up, check nothing.
    """
    check_models(cfg)
    if mode != ATTACH:  # worker processes of a command reuse what its first check found
        check_classes(cfg)
        check_out(cfg.out)
        check_device(cfg.device)
    model_warnings = check_transfer(cfg) if mode != ATTACH else []
    dataset, splits, hashes, lists = load_data_and_lists(cfg)
    warnings = model_warnings + list(dataset.warnings) + list(splits.warnings)
    if dataset.skipped:
        warnings.insert(
            0, f"{len(dataset.skipped)} file(s) could not be decoded and were skipped, e.g. {dataset.skipped[0]}"
        )
    cells = plan_cells(cfg)
    store = Store(cfg.storage_url)
    ctx = StudyContext(
        cfg, dataset, splits, store, study_id=-1, cells=cells, warnings=warnings, lists=lists, hashes=hashes
    )
    # Sizes do not depend on the seed; computing seed 0's subsets checks every size up front.
    sizes = {}
    for kind, value in cfg.sizes:
        n_train = len(ctx.train_indices(Cell(cfg.models[0], kind, value, 0)))
        sizes[(kind, value)] = (n_train, n_train / len(splits.pool))
    if mode == ATTACH:
        ctx.study_id = store.study(cfg.name).id
        return ctx
    digest = hashlib.sha256(hashes.tobytes() + dataset.labels.astype(np.int64).tobytes()).hexdigest()[:32]
    first = ctx.splits_for(0)  # the fixed split, or seed 0's: the store's y_test and sizes describe it
    settings = study_settings(cfg, digest)
    if mode == JOIN:
        ctx.study_id = store.join_study(cfg.name, study_fingerprint(settings), settings)
        return ctx
    ctx.study_id = store.open_study(
        cfg.name,
        study_fingerprint(settings),
        settings,
        stored_config(cfg),
        dataset_summary(dataset),
        {**first.summary(), "warnings": warnings, "split_per_seed": bool(cfg.data.split_per_seed)},
        dataset.labels[first.test],
    )
    store.add_cells(ctx.study_id, [(c, *sizes[(c.size_kind, c.size_value)]) for c in cells])
    if cfg.tune.trials:
        store.add_tuning_jobs(ctx.study_id, plan_tuning(cfg))
        optuna_storage(cfg.storage_url)  # Optuna's tables, made here once rather than raced for by workers
    return ctx


def stored_config(cfg: StudyConfig) -> dict:
    """The config as the store keeps it: the storage and tracking URLs without their passwords
    (whoever reads the store knows where it is; ``study worker`` takes both from its own flags)."""
    config = to_dict(cfg)
    if config.get("storage"):
        config["storage"] = masked_url(config["storage"])
    if config.get("tracking", {}).get("mlflow"):
        config["tracking"]["mlflow"] = masked_url(config["tracking"]["mlflow"])
    return config


def dataset_summary(dataset: Dataset) -> dict:
    counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
    return {
        "name": dataset.name,
        "class_names": dataset.class_names,
        "n_images": int(len(dataset)),
        "image_shape": list(dataset.images.shape[1:]),
        "class_counts": [int(c) for c in counts],
        "official_test_split": dataset.test_mask is not None,
        "skipped_files": len(dataset.skipped),
        "skipped_examples": dataset.skipped[:20],
        "cache_key": dataset.key,
    }
