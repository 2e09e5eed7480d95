"""The study's typed configuration: an optional TOML file, overridden by CLI flags, validated
as a whole before any data is decoded or any model trained.

The file has top-level keys for what the study compares (models, fractions, seeds) and where it
runs, and one section per stage: ``[data]``, ``[train]``, ``[tune]``. ``[[arms]]`` tables name ways to
train (a model plus ``[train]`` keys of its own, see ``Arm``); ``models`` is shorthand for arms named
after their models. ``python -m study init`` writes a
commented example (``EXAMPLE_TOML``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.errors import UserError

DEFAULT_MODELS = ["mobilevit_xxs", "mobilenetv2_100", "resnet18"]
AUGMENT_POLICIES = ("none", "light", "standard", "strong", "trivial")
NORMALIZATIONS = ("model", "imagenet", "half")
OPTIMIZERS = ("adamw", "adam", "sgd")
DEVICES = ("auto", "cpu", "cuda")
CHANNELS_LAST = ("auto", "on", "off")
# The reference experiment fine-tuned pretrained MobileViT with lr 1e-4: right for adapting
# pretrained weights, too small to train from scratch in a short budget (on digits, MobileNetV2
# stays near chance after 6 epochs at 1e-4). From scratch MobileNetV2 wants a high rate and
# MobileViT-XXS a lower one: 4e-3 with a 10% warm-up trained MobileNetV2 on all 1,151 digits to
# 93.1% (3 seeds; 89.0% at the old 2e-3) and kept MobileViT-XXS at 97.3% (96.3% at 5e-3);
# measured in docs/report.md, "The default budget".
FINETUNE_LR = 1e-4
SCRATCH_LR = 4e-3
# Schedule-free AdamW (the plateau budget) from scratch: 1e-2 reached MobileNetV2's plateau on 116
# digits in 400 steps at 95% (4e-3: 620 steps, 94%) and on 1,151 in about 400 (docs/report.md).
SCHEDULE_FREE_LR = 1e-2
WARMUP_DIVISOR = 10  # the learning rate warms up linearly over the first 1/10 of a run's optimiser steps
FINETUNE_MODES = ("full", "head")
NATIVE = "native"  # train.input_size: the size the model was pretrained at
PRUNERS = ("median", "hyperband", "none")
# How long a run trains (``TrainConfig.budget``): until validation accuracy stops improving
# (schedule-free optimisation, no planned end), or a fixed number of epochs on a cosine schedule.
BUDGETS = ("plateau", "fixed")
BACKENDS = ("loky", "dask")  # joblib backends: local processes, or a dask.distributed cluster


@dataclass(frozen=True)
class DataConfig:
    """Which images, at what size, and how they are split."""

    dataset: str = "digits"
    root: str = ""  # folder of the data, for datasets read from disk
    test_root: str = ""  # imagefolder only: a separate folder of test images
    image_size: int = 32  # images are decoded and cached at this size (square)
    test_fraction: float = 0.2  # used when the dataset has no official test split
    val_fraction: float = 0.2  # of the training pool, fixed for all seeds
    min_per_class: int = 2  # every subset keeps at least this many images of each class
    cache_dir: str = ""  # decoded arrays; default <out>/cache
    split_per_seed: bool = False  # each seed draws its own test and validation split (splits as a source of variance)

    def validate(self) -> None:
        _check(self.image_size >= 8, f"data.image_size={self.image_size} is too small; use 8 or more")
        for key in ("test_fraction", "val_fraction"):
            value = getattr(self, key)
            _check(0 < value < 1, f"data.{key}={value} must lie strictly between 0 and 1")
        _check(self.min_per_class >= 1, f"data.min_per_class={self.min_per_class} must be at least 1")


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


@dataclass(frozen=True)
class TrainConfig:
    """How one run trains: the defaults of the hyper-parameters and the budget policy."""

    # plateau: a run trains until validation accuracy has not gained ``min_gain`` points for
    # ``patience`` epochs, under a cap of ``max_steps`` (study/train.py; measured in docs/report.md,
    # "The default budget"). fixed: ``epochs`` epochs on a warm-up + cosine schedule.
    budget: str = "plateau"
    # An epoch is one pass over the run's subset, or min_steps / epochs optimiser steps when a pass is
    # shorter (20 steps by default): validation runs after each. Under the fixed budget, 8 epochs and at
    # least 160 steps: 160, 160, 160 and 288 steps at 10 / 25 / 50 / 100% of digits.
    epochs: int = 8
    min_steps: int = 160  # floor on optimiser steps (fixed budget); with epochs, an epoch's shortest length
    patience: int = 4  # epochs without a validation gain of min_gain points before a run stops; fixed: 0 = never
    min_gain: float = 0.5  # validation accuracy points that count as an improvement
    max_steps: int = 2000  # plateau: the cap on optimiser steps; a run that reaches it is capped, not converged
    warmup_steps: int = 20  # plateau: optimiser steps of linear learning-rate warm-up
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 0.0  # 0 = auto: FINETUNE_LR pretrained; from scratch SCHEDULE_FREE_LR (plateau) or SCRATCH_LR (fixed)
    weight_decay: float = 0.05
    augment: str = "light"
    augment_strength: float = 1.0
    normalization: str = "model"  # the model's pretrained config, ImageNet's, or 0.5/0.5
    input_size: int | str = 0  # model input; 0 = data.image_size, "native" = the model's pretrained size
    label_smoothing: float = 0.0
    # Transfer learning (see study/transfer.py): where initial weights come from, what trains.
    pretrained: bool = False  # timm's pretrained weights for every model without a weights file
    weights: list[str] = field(default_factory=list)  # "MODEL=PATH" local .safetensors / .pth files
    finetune: str = "full"  # full: every layer trains; head: only the new classifier (linear probe)
    freeze_stages: int = 0  # with finetune=full: keep the stem and the first K stages frozen

    def validate(self) -> None:
        _check(self.budget in BUDGETS, f"train.budget={self.budget!r} is unknown; valid: {', '.join(BUDGETS)}")
        _check(self.epochs >= 1, f"train.epochs={self.epochs} must be at least 1")
        _check(self.min_steps >= 0, f"train.min_steps={self.min_steps} must be 0 or more")
        _check(self.batch_size >= 2, f"train.batch_size={self.batch_size} must be at least 2")
        _check(
            self.optimizer in OPTIMIZERS,
            f"train.optimizer={self.optimizer!r} is unknown; valid: {', '.join(OPTIMIZERS)}",
        )
        _check(0 <= self.lr < 10, f"train.lr={self.lr} must be a learning rate in (0, 10), or 0 for auto")
        _check(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} must be 0 or more")
        _check(
            self.augment in AUGMENT_POLICIES,
            f"train.augment={self.augment!r} is unknown; valid: {', '.join(AUGMENT_POLICIES)}",
        )
        _check(0 <= self.augment_strength <= 3, f"train.augment_strength={self.augment_strength} must lie in [0, 3]")
        _check(
            self.normalization in NORMALIZATIONS,
            f"train.normalization={self.normalization!r} is unknown; valid: {', '.join(NORMALIZATIONS)}",
        )
        if self.budget == "plateau":
            _check(
                self.patience >= 1,
                f"train.patience={self.patience} is invalid with train.budget='plateau'; use 1 or more epochs",
            )
        else:
            _check(self.patience >= 0, f"train.patience={self.patience} must be 0 (off) or more")
        _check(
            0 <= self.min_gain <= 10,
            f"train.min_gain={self.min_gain} is invalid; use validation accuracy points in [0, 10]",
        )
        _check(self.warmup_steps >= 0, f"train.warmup_steps={self.warmup_steps} must be 0 or more")
        _check(
            self.max_steps >= max(1, self.warmup_steps),
            f"train.max_steps={self.max_steps} is below train.warmup_steps={self.warmup_steps}; use a cap of at "
            "least the warm-up",
        )
        _check(
            self.budget == "fixed" or self.optimizer != "adam" or self.weight_decay == 0,
            f"train.optimizer='adam' with weight_decay={self.weight_decay} needs train.budget='fixed'; the plateau "
            "budget trains with schedule-free AdamW or SGD (use optimizer='adamw', or weight_decay=0)",
        )
        _check(
            self.input_size == NATIVE
            or (isinstance(self.input_size, int) and (self.input_size == 0 or self.input_size >= 8)),
            f"train.input_size={self.input_size!r} is invalid; use 0 (= data.image_size), '{NATIVE}' (the model's "
            "pretrained size) or a size of 8 px or more",
        )
        _check(0 <= self.label_smoothing < 1, f"train.label_smoothing={self.label_smoothing} must lie in [0, 1)")
        _check(
            self.finetune in FINETUNE_MODES,
            f"train.finetune={self.finetune!r} is unknown; valid: {', '.join(FINETUNE_MODES)}",
        )
        _check(self.freeze_stages >= 0, f"train.freeze_stages={self.freeze_stages} must be 0 (none frozen) or more")
        _check(
            self.finetune == "full" or self.freeze_stages == 0,
            f"train.freeze_stages={self.freeze_stages} only applies to train.finetune='full'; finetune='head' "
            "already freezes every stage",
        )
        _ = self.weight_files  # parsing refuses malformed entries

    @property
    def weight_files(self) -> dict[str, str]:
        """``weights`` as {model name: file path}; refuses entries that are not MODEL=PATH."""
        files: dict[str, str] = {}
        for entry in self.weights:
            model, sep, path = entry.partition("=")
            model, path = model.strip(), path.strip()
            _check(
                bool(sep and model and path),
                f"train.weights entry {entry!r} is invalid; use MODEL=PATH, e.g. "
                "mobilevit_xxs=weights/mobilevit_xxs.safetensors",
            )
            _check(model not in files, f"train.weights names model {model!r} twice; give one file per model")
            files[model] = path
        return files

    def plan(self, n_train: int) -> tuple[int, int, int]:
        """(batch size, optimiser steps per epoch, epochs at most) of a run on ``n_train`` images: an
        epoch is one pass over the subset, or as many passes as give ``min_steps / epochs`` steps
        when the subset is small, so tiny fractions are not starved of updates. Under the plateau
        budget the epochs are the cap's (``max_steps``); the run usually stops before."""
        batch = min(self.batch_size, n_train)
        steps_per_epoch = max(math.ceil(n_train / batch), math.ceil(self.min_steps / self.epochs))
        if self.budget == "plateau":
            return batch, steps_per_epoch, max(1, self.max_steps // steps_per_epoch)
        return batch, steps_per_epoch, self.epochs

    def resolved(self, model: str | None = None) -> TrainConfig:
        """These hyper-parameters with 'auto' values made concrete, as a run of ``model`` uses
        them: it fine-tunes when it starts from timm's weights or from a weights file of its own."""
        pretrained = self.pretrained or (model in self.weight_files if model else bool(self.weights))
        scratch = SCHEDULE_FREE_LR if self.budget == "plateau" else SCRATCH_LR
        return dataclasses.replace(self, lr=self.lr or (FINETUNE_LR if pretrained else scratch))


ARM_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))  # what an arm may set for itself


@dataclass(frozen=True)
class Arm:
    """A named way to train: a timm model and the ``[train]`` keys it sets differently from the
    study's. Cells, results and tuning are per arm; ``models = [m]`` means ``Arm(m, m)``."""

    name: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)  # [train] keys; ``weights`` is one file path

    def train(self, base: TrainConfig) -> TrainConfig:
        """The study's ``[train]`` with this arm's keys in place (its weights file as MODEL=PATH)."""
        values = dict(self.overrides)
        if "weights" in values:
            values["weights"] = [f"{self.model}={values['weights']}"] if values["weights"] else []
        return dataclasses.replace(base, **values)

    def resolved(self, base: TrainConfig) -> TrainConfig:
        """``train(base)`` with its 'auto' values made concrete, as this arm's runs use it."""
        return self.train(base).resolved(self.model)

    def table(self) -> dict[str, Any]:
        """The arm as one ``[[arms]]`` table (how it is written to the store and read back)."""
        return {"name": self.name, "model": self.model, **self.overrides}


ARM_GRAMMAR = "NAME=MODEL[,KEY=VALUE...], e.g. vit-in1k=mobilevit_xxs,pretrained=true"


def parse_arm_spec(spec: str) -> dict[str, Any]:
    """``--arm NAME=MODEL[,KEY=VALUE...]`` as an ``[[arms]]`` table (values still text)."""
    head, *rest = [part.strip() for part in spec.split(",")]
    name, sep, model = (s.strip() for s in head.partition("="))
    _check(bool(sep and name and model), f"--arm {spec!r} is invalid; use {ARM_GRAMMAR}")
    table: dict[str, Any] = {"name": name, "model": model}
    for part in rest:
        key, sep, value = (s.strip() for s in part.partition("="))
        _check(bool(sep and key), f"--arm {spec!r}: {part!r} is not KEY=VALUE; use {ARM_GRAMMAR}")
        _check(key not in table, f"arm {name!r}: key {key!r} is given twice")
        table[key] = value
    return table


def _arm(table: Any) -> Arm:
    """An ``[[arms]]`` table as an Arm, its values checked against the ``[train]`` key types."""
    _check(isinstance(table, dict), f"arms entry {table!r} must be a table with name, model and [train] keys")
    name = table.get("name")
    _check(
        isinstance(name, str) and bool(name.strip()) and "|" not in name,
        f"arm name {name!r} is invalid; give each arm a non-empty name without '|'",
    )
    model = table.get("model")
    _check(isinstance(model, str) and bool(model.strip()), f"arm {name!r}: model {model!r} must name a timm model")
    hints = typing.get_type_hints(TrainConfig)
    overrides = {}
    for key, value in table.items():
        if key in ("name", "model"):
            continue
        _check(key in ARM_KEYS, f"arm {name!r}: unknown key {key!r}; valid keys: name, model, {', '.join(ARM_KEYS)}")
        try:  # ``weights``: one file path for the arm's model (study-wide it is a list of MODEL=PATH)
            overrides[key] = _coerce(value, str if key == "weights" else hints[key], key)
        except UserError as exc:
            raise UserError(f"arm {name!r}: {exc}") from None
    return Arm(name, model, overrides)


def _arms_with_models(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with its ``models`` turned into arms when it also has arms: models given next to
    arms are arms named after them; ``models`` becomes the arms' distinct models."""
    if not raw.get("arms"):
        raw.pop("arms", None)
        return raw
    tables = raw["arms"]
    _check(isinstance(tables, list), "arms must be a list of tables ([[arms]] in TOML, --arm on the command line)")
    models = _coerce(raw["models"], list[str], "models") if "models" in raw else []
    given = [parse_arm_spec(t) if isinstance(t, str) else t for t in tables]
    tables = [{"name": m, "model": m} for m in models] + given
    raw["arms"] = tables
    raw["models"] = list(dict.fromkeys(t.get("model") for t in tables if isinstance(t, dict)))
    return raw


@dataclass(frozen=True)
class TuneConfig:
    """Optuna tuning of each (model, size) on the validation split before its final runs.

    The search space names ``[train]`` keys. A range ``[low, high]`` or a list of choices is
    searched; an empty one leaves that key at its ``[train]`` value; ``[x, x]`` or one choice
    fixes it. Learning rate and weight decay are drawn log-uniformly, the strength uniformly.
    """

    trials: int = 0  # finished (complete or pruned) trials per (model, size); 0 = no tuning
    timeout: float = 0.0  # seconds of finished trials per (model, size); 0 = no limit
    epochs: int = 0  # epochs per trial under the fixed budget; 0 = train.epochs (plateau: trials stop like runs)
    pruner: str = "median"  # median | hyperband | none
    startup_trials: int = 5  # random trials before TPE models the space and pruning starts
    warmup_epochs: int = 2  # epochs a trial always runs before the pruner may stop it
    seed: int = 0  # TPE sampler seed: the same config proposes the same trials
    subset_seed: int = 0  # trials train on this seed's subset
    lr: list[float] = field(default_factory=lambda: [1e-5, 1e-1])
    weight_decay: list[float] = field(default_factory=lambda: [1e-6, 0.3])
    augment: list[str] = field(default_factory=lambda: list(AUGMENT_POLICIES))
    augment_strength: list[float] = field(default_factory=lambda: [0.5, 2.0])
    normalization: list[str] = field(default_factory=lambda: list(NORMALIZATIONS))

    def validate(self) -> None:
        _check(self.trials >= 0, f"tune.trials={self.trials} is invalid; use 0 (no tuning) or more trials")
        _check(self.timeout >= 0, f"tune.timeout={self.timeout} is invalid; use seconds >= 0 (0 = no limit)")
        _check(self.epochs >= 0, f"tune.epochs={self.epochs} is invalid; use 0 (= train.epochs) or more")
        _check(self.pruner in PRUNERS, f"tune.pruner={self.pruner!r} is unknown; valid: {', '.join(PRUNERS)}")
        _check(self.startup_trials >= 0, f"tune.startup_trials={self.startup_trials} must be 0 or more")
        _check(self.warmup_epochs >= 0, f"tune.warmup_epochs={self.warmup_epochs} must be 0 or more")
        for key in ("lr", "weight_decay"):  # log-uniform: both ends positive
            self._check_range(key, lambda v: v > 0 and math.isfinite(v), "positive numbers")
        self._check_range("augment_strength", lambda v: 0 <= v <= 3, "numbers in [0, 3]")
        for key, valid in (("augment", AUGMENT_POLICIES), ("normalization", NORMALIZATIONS)):
            for choice in getattr(self, key):
                _check(choice in valid, f"tune.{key} choice {choice!r} is unknown; valid: {', '.join(valid)}")

    def _check_range(self, key: str, ok, what: str) -> None:
        values = getattr(self, key)
        _check(
            values == [] or (len(values) == 2 and all(ok(v) for v in values) and values[0] <= values[1]),
            f"tune.{key}={values} is invalid; use [low, high] with low <= high, both {what}, or [] to keep train.{key}",
        )

    @property
    def searched(self) -> list[str]:
        """The [train] keys the search space covers, in a fixed order."""
        return [k for k in ("lr", "weight_decay", "augment", "augment_strength", "normalization") if getattr(self, k)]


DEPLOY_RUNS = ("best", "all")


@dataclass(frozen=True)
class DeployConfig:
    """Export to ONNX, int8 quantization and CPU timing of trained models (study/deploy.py).

    Not part of the study's fingerprint: it measures trained models, it does not change them.
    """

    enabled: bool = True  # export after the runs (needs `pip install 'study[deploy]'`)
    runs: str = "best"  # best: each model's best seed (validation accuracy) at the largest size | all: every run
    calibration_images: int = 300  # training images that calibrate static int8 (never test images)
    latency_budget_ms: float = 0.0  # report: the most accurate model within p50 (one thread) <= this; 0 = none
    size_budget_mb: float = 0.0  # report: ... and file size <= this; 0 = none

    def validate(self) -> None:
        _check(self.runs in DEPLOY_RUNS, f"deploy.runs={self.runs!r} is unknown; valid: {', '.join(DEPLOY_RUNS)}")
        _check(
            self.calibration_images >= 1,
            f"deploy.calibration_images={self.calibration_images} must be at least 1, e.g. 300",
        )
        for key in ("latency_budget_ms", "size_budget_mb"):
            value = getattr(self, key)
            _check(
                math.isfinite(value) and value >= 0,
                f"deploy.{key}={value} is invalid; use a positive number, or 0 for no budget",
            )


SEQUENTIAL_MIN_SEEDS = 3  # seeds every cell has before a sequential study adds any


@dataclass(frozen=True)
class SequentialConfig:
    """Seeds added where the answer is least certain (analysis/sequential.py, docs/sequential.md):
    after ``seeds`` seeds of every cell, one more seed at a time goes to the cells whose 95%
    intervals are wider than ``until_ci``, until all are within it, or ``max_seeds``, or
    ``budget_hours``. Not part of the study's fingerprint: like ``seeds``, it only adds runs."""

    until_ci: float = 0.0  # target half-width in accuracy points (per-size accuracy, paired difference); 0 = off
    max_seeds: int = 10  # seeds per cell at most
    budget_hours: float = 0.0  # no seeds added once the runs' training time reaches this; 0 = no limit
    needed_width: float = 0.0  # relative half-width of images-needed intervals (0.5 = within x/÷ 1.5); 0 = not a target

    def validate(self, seeds: int) -> None:
        _check(
            math.isfinite(self.until_ci) and (self.until_ci == 0 or 0.1 <= self.until_ci <= 50),
            f"sequential.until_ci={self.until_ci} is invalid; give a half-width in accuracy points between 0.1 and 50 "
            "(--until-ci 2 means ±2 points), or 0 for a fixed number of seeds",
        )
        _check(
            2 <= self.max_seeds <= 1000,
            f"sequential.max_seeds={self.max_seeds} is invalid; use a whole number of seeds per cell from 2 to 1000",
        )
        _check(
            math.isfinite(self.budget_hours) and self.budget_hours >= 0,
            f"sequential.budget_hours={self.budget_hours} is invalid; use hours of training >= 0 (0 = no limit)",
        )
        _check(
            math.isfinite(self.needed_width) and self.needed_width >= 0,
            f"sequential.needed_width={self.needed_width} is invalid; use a relative half-width >= 0, e.g. 0.5 "
            "(0 = images needed are not a target)",
        )
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
class StudyConfig:
    """Everything a study needs. Cells are arms x sizes x seeds (``models`` alone: one arm per model)."""

    name: str = "default"  # study name in the store; results of different settings never mix
    out: str = "study-out"
    storage: str = ""  # SQLAlchemy URL; default sqlite:///<out>/study.db
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    arms: list[Arm] = field(default_factory=list)  # [[arms]]; empty = one arm per model, named after it
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])
    per_class: list[int] = field(default_factory=list)  # images per class; replaces fractions
    # Files of training image names, one a line: each adds a size whose subset is exactly that list, for every seed.
    subset_lists: list[str] = field(default_factory=list)
    seeds: int = 3
    device: str = "auto"
    jobs: int = 0  # parallel runs; 0 = sized to the machine (loky) or to the cluster (dask)
    threads: int = 0  # torch threads per worker; 0 = the cores shared out among the workers
    backend: str = "loky"  # joblib backend: loky (local processes) | dask (a dask.distributed cluster)
    scheduler: str = ""  # dask: the scheduler's address, e.g. tcp://head-node:8786
    heartbeat: float = 20.0  # seconds between a worker's heartbeats while it holds a run or trial
    grace_period: float = 180.0  # seconds without a heartbeat after which another worker takes the work over
    # Speed and cost settings: they change how fast a study runs, not its results, so they are
    # not part of the study's fingerprint.
    compile: bool = False  # torch.compile each model once per worker
    channels_last: str = "auto"  # auto (measured once per study, model and kind of device) | on | off
    costs: bool = True  # measure each model's MACs, size and CPU latency once per study
    # Convergence check (study/budget_control.py): seed 0 of each model at the smallest and largest
    # size given twice the optimiser steps. Under the plateau budget the run goes on after its stop
    # (only the extra steps are paid); under the fixed budget a companion study retrains it.
    budget_control: bool = True
    # Presentation only: the report's name for each model (timm id -> name); unlisted ids get the
    # readable defaults of reports.format.DISPLAY_NAMES ("MobileViT-XXS", "ResNet-18", ...).
    display_names: dict[str, str] = field(default_factory=dict)
    memory_budget: str = ""  # what a run's images may take on its device ("256MB", "2GB"); "" = half the free memory
    data: DataConfig = field(default_factory=DataConfig)
    # [[datasets]]: several datasets, each a study "<name>/<dataset>" of its own (``dataset_studies``);
    # empty = the one dataset of [data].
    datasets: list[DatasetEntry] = field(default_factory=list)
    group: str = ""  # set on each dataset's study: the name of the study of several datasets it belongs to
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    sequential: SequentialConfig = field(default_factory=SequentialConfig)

    # -- derived -----------------------------------------------------------------------------
    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).absolute() / 'study.db'}"

    @property
    def cache_path(self) -> Path:
        return Path(self.data.cache_dir) if self.data.cache_dir else Path(self.out) / "cache"

    @property
    def study_arms(self) -> list[Arm]:
        """The study's arms: ``arms``, or one per model named after it."""
        return list(self.arms) or [Arm(m, m) for m in self.models]

    def arm(self, name: str) -> Arm:
        """The arm called ``name``."""
        for arm in self.study_arms:
            if arm.name == name:
                return arm
        raise UserError(f"arm {name!r} is not in this study; its arms: {', '.join(a.name for a in self.study_arms)}")

    def dataset_studies(self) -> list[StudyConfig]:
        """One study per ``[[datasets]]`` table, named ``<name>/<dataset>``; none without them."""
        return [
            dataclasses.replace(self, name=f"{self.name}/{d.name}", data=d.data, datasets=[], group=self.name)
            for d in self.datasets
        ]

    @property
    def sizes(self) -> list[tuple[str, float]]:
        """The subset sizes of the study as (kind, value): ('fraction', 0.25) or ('per_class', 10), then
        ('list', i) for the i-th of ``subset_lists``."""
        lists = [("list", float(i)) for i in range(len(self.subset_lists))]
        if self.per_class:
            return [("per_class", float(k)) for k in self.per_class] + lists
        return [("fraction", f) for f in self.fractions] + lists

    def validate(self) -> StudyConfig:
        """Check every value; raise UserError naming the first bad one. Returns self."""
        _check(bool(self.name.strip()), "name must not be empty")
        _check(bool(self.models), "models must name at least one model")
        _check(len(set(self.models)) == len(self.models), f"models={self.models} lists a model twice")
        _check(
            bool(self.fractions) or bool(self.per_class) or bool(self.subset_lists),
            "fractions, per_class or subset_lists must name at least one size",
        )
        from study.subsets import list_name, read_list

        for path in self.subset_lists:
            read_list(path)  # exists, is text, names an image
        names = [list_name(p) for p in self.subset_lists]
        _check(len(set(names)) == len(names), f"subset_lists={self.subset_lists} names two lists alike; rename one")
        for f in self.fractions:
            _check(
                isinstance(f, (int, float)) and math.isfinite(f) and 0 < f <= 1,
                f"fraction {f} is invalid; fractions must lie in (0, 1], e.g. 0.1,0.25,0.5,1.0",
            )
        for k in self.per_class:
            _check(
                isinstance(k, int) and k >= 1,
                f"per_class value {k} is invalid; use whole numbers of images per class >= 1",
            )
        _check(self.seeds >= 1, f"seeds={self.seeds} is invalid; use 1 or more seeds")
        _check(self.device in DEVICES, f"device={self.device!r} is unknown; valid: {', '.join(DEVICES)}")
        _check(self.jobs >= 0, f"jobs={self.jobs} is invalid; use 0 (auto) or a positive number")
        _check(self.threads >= 0, f"threads={self.threads} is invalid; use 0 (auto) or a positive number")
        _check(self.backend in BACKENDS, f"backend={self.backend!r} is unknown; valid: {', '.join(BACKENDS)}")
        if self.backend == "dask":
            _check(
                bool(self.scheduler.strip()),
                "backend='dask' needs the scheduler's address: --scheduler tcp://HOST:8786 (see docs/cluster.md)",
            )
        else:
            _check(
                not self.scheduler,
                f"scheduler={self.scheduler!r} only applies to backend='dask'; add --backend dask or drop --scheduler",
            )
        _check(
            math.isfinite(self.heartbeat) and self.heartbeat > 0,
            f"heartbeat={self.heartbeat} is invalid; use seconds > 0, e.g. 20",
        )
        _check(
            math.isfinite(self.grace_period) and self.grace_period > self.heartbeat,
            f"grace_period={self.grace_period} is invalid; use more seconds than heartbeat={self.heartbeat:g} (a few "
            "heartbeats), e.g. 180",
        )
        _check(
            self.channels_last in CHANNELS_LAST,
            f"channels_last={self.channels_last!r} is unknown; valid: {', '.join(CHANNELS_LAST)}",
        )
        if self.memory_budget:
            parse_bytes(self.memory_budget)
        self.data.validate()
        _check(
            not (self.data.split_per_seed and self.tune.trials),
            f"data.split_per_seed=true with tune.trials={self.tune.trials} is not supported: hyper-parameters tuned on "
            "one seed's validation images would be tested on by other seeds; set tune.trials=0 or split_per_seed=false",
        )
        names = [d.name for d in self.datasets]
        for entry in self.datasets:
            _check(names.count(entry.name) == 1, f"dataset name {entry.name!r} is given twice; name each one once")
            try:
                entry.data.validate()
            except UserError as exc:
                raise UserError(f"dataset {entry.name!r}: {str(exc).replace('data.', '')}") from None
        self.train.validate()
        names = [a.name for a in self.study_arms]
        for name in names:
            _check(names.count(name) == 1, f"arm name {name!r} is given twice; give each arm its own name")
        for arm in self.arms:
            try:
                arm.train(self.train).validate()
            except UserError as exc:  # name the arm and its key, not the study-wide [train] key
                raise UserError(f"arm {arm.name!r}: {str(exc).replace('train.', '')}") from None
        for model in self.train.weight_files:
            _check(
                model in self.models,
                f"train.weights names model {model!r}, which is not in models ({', '.join(self.models)}); give "
                "weights only for models of the study",
            )
        self.tune.validate()
        self.deploy.validate()
        self.sequential.validate(self.seeds)
        return self


_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str) -> int:
    """A memory size such as ``256MB``, ``2GB``, ``1.5GiB`` or ``1000000`` in bytes (binary units:
    1 MB = 1024² bytes). Raises UserError for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"memory_budget={text!r} is invalid; use a size such as 256MB, 2GB or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


# -- loading ---------------------------------------------------------------------------------


def load(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read the TOML file at ``path`` (if any), apply ``overrides`` and validate.

    ``overrides`` uses dotted keys for sections (``{"train.epochs": 3, "seeds": 2}``);
    values that are None are ignored, so argparse namespaces can be passed through.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {str(p)!r} does not exist; create one with `python -m study init`")
        try:
            raw = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
    return from_dict(StudyConfig, _datasets_over_data(_arms_with_models(_overridden(raw, overrides))), "").validate()


# Top-level keys that describe the machine a command runs on, not the study.
MACHINE_KEYS = ("out", "device", "jobs", "threads", "backend", "scheduler", "compile", "memory_budget")


def from_stored(stored: dict[str, Any], overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Rebuild a study's config from the copy in the store (``studies.config``), with this
    machine's ``overrides`` (dotted keys, as for ``load``): how ``study worker`` joins a study
    from its storage URL alone. Keys written by an older version and unknown now are dropped;
    keys added since take their defaults; ``MACHINE_KEYS`` take this machine's flags or defaults."""
    raw = _known_keys(StudyConfig, copy.deepcopy(stored))
    for key in MACHINE_KEYS:  # how the invoking machine ran it says nothing about this one
        raw.pop(key, None)
    if raw.get("arms"):  # stored arms already include those named after models
        raw.pop("models", None)
    return from_dict(StudyConfig, _datasets_over_data(_arms_with_models(_overridden(raw, overrides))), "").validate()


def _known_keys(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {
        k: _known_keys(hints[k], v) if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict) else v
        for k, v in raw.items()
        if k in hints
    }


def _overridden(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``raw`` with dotted-key ``overrides`` applied; None values are ignored."""
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *sections, key = dotted.split(".")
        target = raw
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = value
    return raw


def from_dict(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a plain dict, refusing unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a table of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys: {', '.join(prefix + k for k in fields)}"
        )
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if hint == list[Arm]:
            values[name] = [_arm(table) for table in value]
        elif hint == list[DatasetEntry]:
            values[name] = [_dataset_entry(table) for table in value]
        elif dataclasses.is_dataclass(hint):
            values[name] = from_dict(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a simple type hint (str, int, float, bool, list[...])."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key)
            except UserError:
                pass
        raise UserError(f"{key}={value!r} has the wrong type; expected {hint}")
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise UserError(f'{key}={value!r} must be a table of keys, e.g. {{ resnet18 = "ResNet-18" }}')
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):  # "0.1,0.25" from the CLI or a hand-written file
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}={value!r} must be a list")
        return [_coerce(v, item, key) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    kind = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))
    hint_text = _HINTS.get(key, "")
    raise UserError(f"{key}={value!r} is not {kind}" + (f"; {hint_text}" if hint_text else ""))


_HINTS = {
    "fractions": "fractions must be numbers in (0, 1], e.g. 0.1,0.25,0.5,1.0",
    "per_class": "per_class must be whole numbers of images per class, e.g. 5,10,50",
    "seeds": "use a whole number of seeds >= 1",
}


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for the store and for fingerprints); arms as ``[[arms]]`` tables."""
    plain = dataclasses.asdict(cfg)
    if isinstance(cfg, StudyConfig):
        plain["arms"] = [arm.table() for arm in cfg.arms]
        plain["datasets"] = [entry.table() for entry in cfg.datasets]
    return plain


EXAMPLE_TOML = """\
# study.toml: configuration of a data-efficiency study.
# Run it with:  python -m study run --config study.toml
# Any value can also be given on the command line, which wins over this file.

name = "default"          # study name in the store; change it to start a separate study
out = "study-out"          # results, cache and report go here
# storage = "sqlite:///study-out/study.db"   # or postgresql+psycopg://user@host/db

models = ["mobilevit_xxs", "mobilenetv2_100", "resnet18"]   # any timm model name
# Arms instead (or as well): named ways to train, a model plus any [train] keys of its own (an arm's
# weights key is one file of its model); [[arms]] tables work too (docs/arms.md)
# arms = [{ name = "vit-in1k", model = "mobilevit_xxs", pretrained = true }, { name = "r18", model = "resnet18" }]
fractions = [0.1, 0.25, 0.5, 1.0]   # nested, stratified fractions of the training pool
# per_class = [5, 10, 50]           # images per class instead of fractions
# subset_lists = ["1percent.txt"]   # files of training image names: each a size of exactly those images
seeds = 3                           # each seed draws its own subsets, init and augmentation
device = "auto"                     # auto | cpu | cuda
jobs = 0                            # parallel runs; 0 = sized to the machine (or the dask cluster)
threads = 0                         # torch threads per worker; 0 = the cores shared out among the workers
backend = "loky"                    # loky (local processes) | dask (a dask.distributed cluster)
# scheduler = "tcp://head-node:8786" # backend = "dask": the scheduler's address
heartbeat = 20                      # seconds between heartbeats of a worker holding a run or trial
grace_period = 180                  # seconds without one after which another worker takes the work over
compile = false                     # torch.compile each model once per worker (pays off on long GPU runs)
channels_last = "auto"              # memory layout: auto (measured once per study, model and device kind) | on | off
costs = true                        # measure MACs, size and CPU latency of each model once per study
budget_control = true              # give seed 0 at the smallest and largest size twice the optimiser steps:
                                    # the report then tests convergence against the seed noise
# display_names = { resnet18 = "ResNet-18" }   # names in the report; readable defaults for common timm ids
# memory_budget = "2GB"             # a run's images on its device, beyond which they stream ("" = half the free memory)

# Several datasets instead of one: each a name plus [data] keys (the rest come from [data]); every arm
# trains on every dataset, each a study "<name>/<dataset>" of its own; [[datasets]] tables work too
# datasets = [{ name = "tiny", dataset = "tiny-imagenet", root = "data/tiny-imagenet-200" }, { name = "digits" }]
# group = ""              # set by the study itself on each dataset's study: the study of several datasets

[data]
dataset = "digits"  # digits (bundled) | imagefolder | tiny-imagenet | imagenet | cifar10 | cifar100 | text-recognition
# root = "path/to/images" # imagefolder: one subfolder per class; tiny-imagenet: tiny-imagenet-200/;
                          # cifar10/100: torchvision's root (downloaded into <out>/cache/downloads if empty);
                          # text-recognition: the output of `study datasets build-text-recognition`
# test_root = ""          # imagefolder: optional separate folder of test images
# cache_dir = ""          # where decoded arrays are cached; default <out>/cache
image_size = 32           # images are decoded once at this size and cached
test_fraction = 0.2       # held-out test split when the dataset has none of its own
val_fraction = 0.2        # validation part of the training pool (tuning, early stopping)
min_per_class = 2         # every subset keeps at least this many images per class
split_per_seed = false    # true: each seed draws its own stratified test and validation split, so the report
                          # measures the split's share of the variance (docs/statistics.md)

[train]
budget = "plateau"        # plateau: until validation stops improving (schedule-free AdamW) | fixed: `epochs`, cosine
patience = 4              # epochs without a validation gain of min_gain points before a run stops (fixed: 0 = never)
min_gain = 0.5            # validation accuracy points that count as an improvement
max_steps = 2000          # plateau: cap on optimiser steps; a run that reaches it is capped (not converged)
warmup_steps = 20         # plateau: optimiser steps of linear learning-rate warm-up
epochs = 8                # fixed: epochs per run; both: an epoch is a pass, or min_steps / epochs steps if more
min_steps = 160           # fixed: floor on optimiser steps for small fractions
batch_size = 32
optimizer = "adamw"       # adamw | adam | sgd
lr = 0                    # 0 = auto: 1e-4 fine-tuning pretrained weights; from scratch 1e-2 (plateau), 4e-3 (fixed)
weight_decay = 0.05
augment = "light"         # none | light | standard | strong | trivial
augment_strength = 1.0    # 0 = off, 1 = default magnitudes, up to 3
normalization = "model"   # model (its pretrained config) | imagenet | half (0.5/0.5)
input_size = 0            # model input size; 0 = data.image_size, "native" = the size the model was pretrained at
label_smoothing = 0.0
pretrained = false        # start from timm's pretrained weights (hub cache; HF_HUB_OFFLINE=1 works with a filled cache)
weights = []              # local weight files, e.g. ["mobilevit_xxs=weights/mobilevit_xxs.safetensors"]
finetune = "full"         # full | head (linear probe: only the new classifier trains)
freeze_stages = 0         # finetune = "full": keep the stem and the first K stages frozen

[tune]                    # Optuna tunes [train] keys per (model, size) on the validation split
trials = 0                # finished trials per (model, size); 0 = no tuning (use [train])
timeout = 0               # seconds of trials per (model, size); 0 = no limit
epochs = 0                # epochs per trial; 0 = train.epochs
pruner = "median"         # median | hyperband | none
startup_trials = 5        # random trials before TPE takes over and pruning starts
warmup_epochs = 2         # epochs a trial always runs before the pruner may stop it
seed = 0                  # TPE sampler seed: the same config proposes the same trials
subset_seed = 0           # trials train on this seed's subset; final runs use every seed
# Search space: [low, high] is searched, [] keeps the [train] value, [x, x] fixes it.
lr = [1e-5, 1e-1]                # log-uniform
weight_decay = [1e-6, 0.3]       # log-uniform
augment = ["none", "light", "standard", "strong", "trivial"]
augment_strength = [0.5, 2.0]    # uniform
normalization = ["model", "imagenet", "half"]

[deploy]                  # ONNX export, int8 quantization and CPU timing (pip install 'study[deploy]')
enabled = true            # export after the runs; --no-deploy turns it off
runs = "best"             # best: each model's best seed (by validation accuracy) at the largest size | all: every run
calibration_images = 300  # training images that calibrate static int8 (never test images)
latency_budget_ms = 0     # report: the most accurate model with p50 latency (one thread) within this; 0 = no budget
size_budget_mb = 0        # report: ... and with a file within this size; 0 = no budget

[sequential]              # seeds added where the answer is least certain (docs/sequential.md)
until_ci = 0              # target half-width of the 95% intervals, in accuracy points; 0 = a fixed number of seeds
max_seeds = 10            # seeds per cell at most
budget_hours = 0          # no more seeds once the runs' training time reaches this; 0 = no limit
needed_width = 0          # also narrow images-needed intervals to this relative half-width (0.5 = x/÷ 1.5); 0 = no
"""
