"""The sections of a study's stages besides training, each setting declared once: which images
and how they are split (``[data]``, and ``[[datasets]]`` for several), Optuna tuning (``[tune]``),
export and timing of the trained models (``[deploy]``), and seeds added where the answer is least
certain (``[sequential]``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from study.coerce import from_dict
from study.config_train import AUGMENT_POLICIES, NORMALIZATIONS
from study.settings import Check, check_declared, setting
from study.settings import check as _check

PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class DataConfig:
    """Which images, at what size, and how they are split."""

    dataset: str = setting(
        "digits",
        "the dataset",
        "study",
        flag="--dataset",
        allowed="digits (bundled) | imagefolder | tiny-imagenet | imagenet | cifar10 | cifar100 | text-recognition",
        methods=True,
    )
    root: str = setting(
        "",
        "the dataset's folder (imagefolder: one subfolder per class; cifar: torchvision's root, downloaded into "
        "<out>/cache/downloads if empty; text-recognition: the output of `study datasets build-text-recognition`)",
        "study",
        flag="--data-root",
        metavar="DIR",
        also=("worker",),
        also_help="where the dataset lies on this machine (default: where the study's config says)",
        example='"path/to/images"',
    )
    test_root: str = setting(
        "",
        "imagefolder: a separate folder of test images",
        "study",
        flag="--test-root",
        metavar="DIR",
        also=("worker",),
        also_help="imagefolder: where the test images lie on this machine",
        example='""',
    )
    image_size: int = setting(
        32,
        "the side of the square images as decoded and cached",
        "study",
        flag="--image-size",
        metavar="PX",
        unit="px",
        check=(lambda v: v >= 8, "{key}={value} is too small; use 8 or more"),
        methods=True,
    )
    test_fraction: float = setting(
        0.2,
        "the held-out test split's share, when the dataset has no test split of its own",
        "study",
        check=(lambda v: 0 < v < 1, "{key}={value} must lie strictly between 0 and 1"),
        methods=True,
    )
    val_fraction: float = setting(
        0.2,
        "the validation split's share of the training pool (tuning, early stopping), fixed for every seed",
        "study",
        check=(lambda v: 0 < v < 1, "{key}={value} must lie strictly between 0 and 1"),
        methods=True,
    )
    min_per_class: int = setting(
        2,
        "every subset keeps at least this many images of each class",
        "study",
        check=(lambda v: v >= 1, "{key}={value} must be at least 1"),
        methods=True,
    )
    cache_dir: str = setting("", "where decoded arrays are cached", "study", zero="<out>/cache", example='""')
    split_per_seed: bool = setting(
        False,
        "each seed draws its own stratified test and validation split, so the report measures the split's share of "
        "the variance (default: one split for every seed; docs/statistics.md)",
        "study",
        flag="--split-per-seed",
        kind="bool",
        methods=True,
    )

    def validate(self) -> None:
        check_declared(self, "data.")


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a study of several (``[[datasets]]``): a name and its ``[data]`` keys (those
    it does not set come from the study's ``[data]``). Each trains every arm in a study of its own,
    ``<study>/<name>``, with its own splits and nested subsets."""

    name: str
    data: DataConfig

    def table(self) -> dict[str, Any]:
        """The dataset as one ``[[datasets]]`` table (how it is written to the store and read back)."""
        return {"name": self.name, **dataclasses.asdict(self.data)}

    @classmethod
    def from_table(cls, table: Any) -> DatasetEntry:
        """A ``[[datasets]]`` table as a DatasetEntry (``_dataset_entry``)."""
        return _dataset_entry(table)


def _dataset_entry(table: Any) -> DatasetEntry:
    """A ``[[datasets]]`` table as a DatasetEntry, its keys checked as ``[data]``'s."""
    _check(isinstance(table, dict), f"datasets entry {table!r} must be a table with name and [data] keys")
    name = table.get("name")
    _check(
        isinstance(name, str) and bool(name.strip()) and not set(name) & set("/|"),
        f"dataset name {name!r} is invalid; give each [[datasets]] table a non-empty name without '/' or '|'",
    )
    rest = {k: v for k, v in table.items() if k != "name"}
    return DatasetEntry(name, from_dict(DataConfig, rest, f"datasets.{name}."))


def _datasets_over_data(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with each ``[[datasets]]`` table completed by the study's ``[data]`` keys."""
    if not raw.get("datasets"):
        raw.pop("datasets", None)
        return raw
    _check(isinstance(raw["datasets"], list), "datasets must be a list of tables ([[datasets]] in TOML)")
    base = raw.get("data", {}) if isinstance(raw.get("data"), dict) else {}
    raw["datasets"] = [{**base, **t} if isinstance(t, dict) else t for t in raw["datasets"]]
    return raw


def _range(ok: Any, what: str, key: str) -> Check:
    """The check of a search range: [] or [low, high] with low <= high, both ``ok``."""
    return (
        lambda v: v == [] or (len(v) == 2 and all(ok(x) for x in v) and v[0] <= v[1]),
        "{key}={value} is invalid; use [low, high] with low <= high, both " + what + ", or [] to keep train." + key,
    )


@dataclass(frozen=True)
class TuneConfig:
    """Optuna tuning of each (model, size) on the validation split before its final runs.

    The search space names ``[train]`` keys. A range ``[low, high]`` or a list of choices is
    searched; an empty one leaves that key at its ``[train]`` value; ``[x, x]`` or one choice
    fixes it. Learning rate and weight decay are drawn log-uniformly, the strength uniformly.
    """

    trials: int = setting(
        0,
        "Optuna trials (finished or pruned) per model and size before the final runs",
        "study",
        flag="--trials",
        metavar="N",
        zero="0 = no tuning: use [train]",
        check=(lambda v: v >= 0, "{key}={value} is invalid; use 0 (no tuning) or more trials"),
    )
    timeout: float = setting(
        0.0,
        "seconds of trials per model and size",
        "study",
        flag="--tune-timeout",
        metavar="SECONDS",
        zero="0 = no limit",
        unit="s",
        check=(lambda v: v >= 0, "{key}={value} is invalid; use seconds >= 0 (0 = no limit)"),
    )
    epochs: int = setting(
        0,
        "epochs per trial under the fixed budget (plateau: trials stop like runs)",
        "study",
        zero="0 = train.epochs",
        check=(lambda v: v >= 0, "{key}={value} is invalid; use 0 (= train.epochs) or more"),
    )
    pruner: str = setting(
        "median", "the pruner that stops unpromising trials", "study", flag="--pruner", metavar="NAME", choices=PRUNERS
    )
    startup_trials: int = setting(
        5,
        "random trials before TPE models the space and pruning starts",
        "study",
        check=(lambda v: v >= 0, "{key}={value} must be 0 or more"),
    )
    warmup_epochs: int = setting(
        2,
        "epochs a trial always runs before the pruner may stop it",
        "study",
        check=(lambda v: v >= 0, "{key}={value} must be 0 or more"),
    )
    seed: int = setting(0, "TPE sampler seed: the same config proposes the same trials", "study")
    subset_seed: int = setting(0, "trials train on this seed's subset; final runs use every seed", "study")
    # Search space: [low, high] is searched, [] keeps the [train] value, [x, x] fixes it.
    lr: list[float] = setting(
        [1e-5, 1e-1],
        "search range of the learning rate, drawn log-uniformly",
        "study",
        check=_range(lambda v: v > 0 and math.isfinite(v), "positive numbers", "lr"),
    )
    weight_decay: list[float] = setting(
        [1e-6, 0.3],
        "search range of the weight decay, drawn log-uniformly",
        "study",
        check=_range(lambda v: v > 0 and math.isfinite(v), "positive numbers", "weight_decay"),
    )
    augment: list[str] = setting(
        list(AUGMENT_POLICIES), "augmentation policies to choose from", "study", choices=AUGMENT_POLICIES
    )
    augment_strength: list[float] = setting(
        [0.5, 2.0],
        "search range of the augmentation strength, drawn uniformly",
        "study",
        check=_range(lambda v: 0 <= v <= 3, "numbers in [0, 3]", "augment_strength"),
    )
    normalization: list[str] = setting(
        list(NORMALIZATIONS), "normalisations to choose from", "study", choices=NORMALIZATIONS
    )

    def validate(self) -> None:
        check_declared(self, "tune.")

    @property
    def searched(self) -> list[str]:
        """The [train] keys the search space covers, in a fixed order."""
        return [k for k in ("lr", "weight_decay", "augment", "augment_strength", "normalization") if getattr(self, k)]


DEPLOY_RUNS = ("best", "all")
_NO_BUDGET = "{key}={value} is invalid; use a positive number, or 0 for no budget"


@dataclass(frozen=True)
class DeployConfig:
    """Export to ONNX, int8 quantization and CPU timing of trained models (study/deploy.py).

    Not part of the study's fingerprint: it measures trained models, it does not change them.
    """

    enabled: bool = setting(
        True,
        "after the runs, export the trained models to ONNX, quantize them to int8 and time them on the CPU "
        "(onnx and onnxruntime come with `pip install -e .`)",
        "study",
        flag="--no-deploy",
        kind="off",
    )
    runs: str = setting(
        "best",
        "runs to export: best (each model's best seed by validation accuracy, at the largest size) or all",
        "study",
        flag="--deploy-runs",
        metavar="WHICH",
        choices=DEPLOY_RUNS,
        also=("deploy",),
        also_help="best (default) | all: every run whose weights were kept",
    )
    calibration_images: int = setting(
        300,
        "training images that calibrate static int8 (never test images)",
        "study",
        check=(lambda v: v >= 1, "{key}={value} must be at least 1, e.g. 300"),
    )
    latency_budget_ms: float = setting(
        0.0,
        "the report names the most accurate model whose p50 latency (ONNX Runtime or PyTorch, one thread) fits, "
        "per size",
        "report",
        flag="--latency-budget-ms",
        metavar="MS",
        zero="0 = no budget",
        unit="ms",
        check=(lambda v: math.isfinite(v) and v >= 0, _NO_BUDGET),
    )
    size_budget_mb: float = setting(
        0.0,
        "... and whose file fits this size",
        "report",
        flag="--size-budget-mb",
        metavar="MB",
        zero="0 = no budget",
        unit="MB",
        check=(lambda v: math.isfinite(v) and v >= 0, _NO_BUDGET),
    )

    def validate(self) -> None:
        check_declared(self, "deploy.")


SEQUENTIAL_MIN_SEEDS = 3  # seeds every cell has before a sequential study adds any


@dataclass(frozen=True)
class SequentialConfig:
    """Seeds added where the answer is least certain (analysis/sequential.py, docs/sequential.md):
    after ``seeds`` seeds of every cell, one more seed at a time goes to the cells whose 95%
    intervals are wider than ``until_ci``, until all are within it, or ``max_seeds``, or
    ``budget_hours``. Not part of the study's fingerprint: like ``seeds``, it only adds runs."""

    until_ci: float = setting(
        0.0,
        "after the first seeds (3 or more), add one seed at a time where the 95% intervals of per-size accuracies "
        "and paired differences are wider than ±W accuracy points, until all are within it (docs/sequential.md)",
        "study",
        flag="--until-ci",
        metavar="W",
        zero="0 = a fixed number of seeds",
        unit="accuracy points",
        check=(
            lambda v: math.isfinite(v) and (v == 0 or 0.1 <= v <= 50),
            "{key}={value} is invalid; give a half-width in accuracy points between 0.1 and 50 "
            "(--until-ci 2 means ±2 points), or 0 for a fixed number of seeds",
        ),
    )
    max_seeds: int = setting(
        10,
        "with until_ci: seeds per cell at most",
        "study",
        flag="--max-seeds",
        metavar="N",
        check=(
            lambda v: 2 <= v <= 1000,
            "{key}={value} is invalid; use a whole number of seeds per cell from 2 to 1000",
        ),
    )
    budget_hours: float = setting(
        0.0,
        "with until_ci: no more seeds once the runs' training time reaches this many hours",
        "study",
        flag="--budget-hours",
        metavar="H",
        zero="0 = no limit",
        unit="h",
        check=(
            lambda v: math.isfinite(v) and v >= 0,
            "{key}={value} is invalid; use hours of training >= 0 (0 = no limit)",
        ),
    )
    needed_width: float = setting(
        0.0,
        "also narrow the images-needed intervals to this relative half-width (0.5 = within x/÷ 1.5)",
        "study",
        zero="0 = not a target",
        check=(
            lambda v: math.isfinite(v) and v >= 0,
            "{key}={value} is invalid; use a relative half-width >= 0, e.g. 0.5 (0 = images needed are not a target)",
        ),
    )

    def validate(self, seeds: int) -> None:
        check_declared(self, "sequential.")
        if self.until_ci:
            _check(
                seeds >= SEQUENTIAL_MIN_SEEDS,
                f"seeds={seeds} is too few to start --until-ci; every cell needs at least {SEQUENTIAL_MIN_SEEDS} seeds "
                "before the intervals can say where more are needed: use --seeds 3 or more",
            )
            _check(
                self.max_seeds >= seeds,
                f"sequential.max_seeds={self.max_seeds} is below seeds={seeds}; --max-seeds caps the seeds per cell, "
                f"so give {seeds} or more",
            )

    @property
    def enabled(self) -> bool:
        return self.until_ci > 0


@dataclass(frozen=True)
class TrackingConfig:
    """Where a study's runs are also recorded: an MLflow tracker (study/tracking.py,
    docs/tracking.md). Not part of the study's fingerprint, and each machine gives its own (a
    worker does not take the study's): it records runs, it does not change them."""

    mlflow: str = setting(
        "",
        "also record every run in this MLflow tracker: a folder (local file store), sqlite:///FILE.db or "
        "http(s)://HOST:PORT (pip install -e '.[tracking]'; docs/tracking.md)",
        "machine",
        flag="--mlflow",
        metavar="URI",
        zero="off",
        example='"mlruns"',
    )

    def validate(self) -> None:
        check_declared(self, "tracking.")
        if self.mlflow:
            from study.tracking_uri import check_uri

            check_uri(self.mlflow)
