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
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.coerce import coerce, known_keys, overridden, parse_bytes
from study.errors import UserError
from study.settings import Check, check_declared, declared, example_toml, setting

__all__ = ["parse_bytes"]  # re-exported: memory sizes are read where the images are placed

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
WARMUP_DIVISOR = 10  # the learning rate warms up linearly over the first 1/10 of a run's optimiser steps
FINETUNE_MODES = ("full", "head")
NATIVE = "native"  # train.input_size: the size the model was pretrained at
PRUNERS = ("median", "hyperband", "none")
BACKENDS = ("loky", "dask")  # joblib backends: local processes, or a dask.distributed cluster


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

    # 8 epochs and at least 160 steps: 160, 160, 160 and 288 steps at 10 / 25 / 50 / 100% of digits.
    # Small subsets need as many steps as large ones to fit (at 40 steps MobileNetV2 reached 37% on
    # 116 images, at 150 steps 85%); the budget is what the default study's 5 minutes allow.
    epochs: int = setting(
        8,
        "epochs per run: passes over the run's subset; a small subset repeats passes within an epoch until it has "
        "min_steps / epochs optimiser steps",
        "arm",
        flag="--epochs",
        metavar="N",
        check=(lambda v: v >= 1, "{key}={value} must be at least 1"),
    )
    min_steps: int = setting(
        160,
        "floor on optimiser steps per run, so that small subsets are not starved",
        "arm",
        flag="--min-steps",
        metavar="N",
        check=(lambda v: v >= 0, "{key}={value} must be 0 or more"),
    )
    batch_size: int = setting(
        32,
        "images per optimiser step (a smaller subset uses its size)",
        "arm",
        flag="--batch-size",
        metavar="N",
        check=(lambda v: v >= 2, "{key}={value} must be at least 2"),
    )
    optimizer: str = setting("adamw", "the optimiser", "arm", choices=OPTIMIZERS)
    lr: float = setting(
        0.0,
        "peak learning rate (auto: 4e-3 from scratch, 1e-4 when fine-tuning pretrained weights)",
        "arm",
        flag="--lr",
        metavar="LR",
        zero="0 = auto",
        check=(lambda v: 0 <= v < 10, "{key}={value} must be a learning rate in (0, 10), or 0 for auto"),
    )
    weight_decay: float = setting(
        0.05, "decoupled weight decay on weights", "arm", check=(lambda v: v >= 0, "{key}={value} must be 0 or more")
    )
    augment: str = setting(
        "light",
        "augmentation policy of the training batches",
        "arm",
        flag="--augment",
        metavar="POLICY",
        choices=AUGMENT_POLICIES,
    )
    augment_strength: float = setting(
        1.0,
        "augmentation magnitude: 0 = off, 1 = the policy's, up to 3",
        "arm",
        check=(lambda v: 0 <= v <= 3, "{key}={value} must lie in [0, 3]"),
    )
    normalization: str = setting(
        "model",
        "input normalisation: the model's pretrained config, ImageNet's, or mean 0.5 / std 0.5",
        "arm",
        choices=NORMALIZATIONS,
    )
    patience: int = setting(
        0,
        "epochs without validation improvement before a run stops early",
        "arm",
        zero="0 = never stop early",
        check=(lambda v: v >= 0, "{key}={value} must be 0 (off) or more"),
    )
    input_size: int | str = setting(
        0,
        "model input side (0 = data.image_size, native = each model's pretrained size)",
        "arm",
        flag="--input-size",
        metavar="PX|native",
        zero="0 = --image-size",
        unit="px",
        check=(
            lambda v: v == NATIVE or (isinstance(v, int) and (v == 0 or v >= 8)),
            "{key}={value!r} is invalid; use 0 (= data.image_size), '" + NATIVE + "' (the model's "
            "pretrained size) or a size of 8 px or more",
        ),
    )
    label_smoothing: float = setting(
        0.0, "label smoothing of the loss", "arm", check=(lambda v: 0 <= v < 1, "{key}={value} must lie in [0, 1)")
    )
    # Transfer learning (see study/transfer.py): where initial weights come from, what trains.
    pretrained: bool = setting(
        False,
        "start from timm's pretrained weights, for every model without a weights file (hub cache; "
        "HF_HUB_OFFLINE=1 works with a filled cache)",
        "arm",
        flag="--pretrained",
        kind="bool",
    )
    weights: list[str] = setting(
        [],
        "local .safetensors / .pth weights of a model, as MODEL=PATH",
        "arm",
        flag="--weights",
        metavar="MODEL=PATH",
        kind="append",
    )
    finetune: str = setting(
        "full",
        "what trains: every layer (full) or only the new classifier, a linear probe (head)",
        "arm",
        flag="--finetune",
        metavar="MODE",
        choices=FINETUNE_MODES,
    )
    freeze_stages: int = setting(
        0,
        "with finetune full: keep the stem and the first K stages frozen",
        "arm",
        flag="--freeze-stages",
        metavar="K",
        check=(lambda v: v >= 0, "{key}={value} must be 0 (none frozen) or more"),
    )

    def validate(self) -> None:
        check_declared(self, "train.")
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

    def budget(self, n_train: int) -> tuple[int, int, int]:
        """(batch size, optimiser steps per epoch, epochs) of a run on ``n_train`` images: an
        epoch is one pass over the subset, or as many passes as give ``min_steps / epochs`` steps
        when the subset is small, so tiny fractions are not starved of updates."""
        batch = min(self.batch_size, n_train)
        steps_per_epoch = math.ceil(n_train / batch)
        return batch, max(steps_per_epoch, math.ceil(self.min_steps / self.epochs)), self.epochs

    def resolved(self, model: str | None = None) -> TrainConfig:
        """These hyper-parameters with 'auto' values made concrete, as a run of ``model`` uses
        them: it fine-tunes when it starts from timm's weights or from a weights file of its own."""
        pretrained = self.pretrained or (model in self.weight_files if model else bool(self.weights))
        return dataclasses.replace(self, lr=self.lr or (FINETUNE_LR if pretrained else SCRATCH_LR))


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
            overrides[key] = coerce(value, str if key == "weights" else hints[key], key)
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
    models = coerce(raw["models"], list[str], "models") if "models" in raw else []
    given = [parse_arm_spec(t) if isinstance(t, str) else t for t in tables]
    tables = [{"name": m, "model": m} for m in models] + given
    raw["arms"] = tables
    raw["models"] = list(dict.fromkeys(t.get("model") for t in tables if isinstance(t, dict)))
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
        "epochs per trial",
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
        "(needs `pip install 'study[deploy]'`)",
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
class StudyConfig:
    """Everything a study needs. Cells are arms x sizes x seeds (``models`` alone: one arm per model)."""

    name: str = setting(
        "default",
        "study name in the store; change it to start a separate study (results of different settings never mix)",
        "location",
        flag="--name",
        aliases=("--study",),
        check=(lambda v: bool(v.strip()), "name must not be empty"),
    )
    out: str = setting("study-out", "results, cache and report folder", "location", flag="--out", metavar="DIR")
    storage: str = setting(
        "",
        "SQLAlchemy URL of the store (or postgresql+psycopg://user@host/db)",
        "location",
        flag="--storage",
        metavar="URL",
        zero="sqlite:///<out>/study.db",
        example='"sqlite:///study-out/study.db"',
    )
    models: list[str] = setting(
        list(DEFAULT_MODELS),
        "timm model names, each an arm named after its model",
        "study",
        flag="--models",
        metavar="A,B",
        check=[
            (bool, "models must name at least one model"),
            (lambda v: len(set(v)) == len(v), "models={value} lists a model twice"),
        ],
    )
    arms: list[Arm] = setting(
        [],
        "named ways to train: a timm model plus [train] keys of its own (weights=PATH: a weights file of its "
        "model), e.g. vit-in1k=mobilevit_xxs,pretrained=true; [[arms]] tables work too (docs/arms.md)",
        "study",
        flag="--arm",
        metavar="NAME=MODEL[,KEY=VALUE...]",
        kind="append",
        example='[{ name = "vit-in1k", model = "mobilevit_xxs", pretrained = true }, '
        '{ name = "r18", model = "resnet18" }]',
    )
    fractions: list[float] = setting(
        [0.1, 0.25, 0.5, 1.0],
        "nested, stratified fractions of the training pool, each in (0, 1]",
        "study",
        flag="--fractions",
        metavar="F,F",
        each=True,
        wrong_type="fractions must be numbers in (0, 1], e.g. 0.1,0.25,0.5,1.0",
        check=(
            lambda f: isinstance(f, (int, float)) and math.isfinite(f) and 0 < f <= 1,
            "fraction {value} is invalid; fractions must lie in (0, 1], e.g. 0.1,0.25,0.5,1.0",
        ),
    )
    per_class: list[int] = setting(
        [],
        "images per class instead of fractions, e.g. 5,10,50",
        "study",
        flag="--per-class",
        metavar="K,K",
        example="[5, 10, 50]",
        each=True,
        wrong_type="per_class must be whole numbers of images per class, e.g. 5,10,50",
        check=(
            lambda k: isinstance(k, int) and k >= 1,
            "per_class value {value} is invalid; use whole numbers of images per class >= 1",
        ),
    )
    subset_lists: list[str] = setting(
        [],
        "files of training image names, one a line: each adds a size of exactly those images, for every seed",
        "study",
        flag="--subset-list",
        metavar="FILE",
        kind="append",
        example='["1percent.txt"]',
    )
    seeds: int = setting(
        3,
        "seeds per cell (each draws its own subset, initialisation and augmentation)",
        "study",
        flag="--seeds",
        metavar="N",
        check=(lambda v: v >= 1, "{key}={value} is invalid; use 1 or more seeds"),
        wrong_type="use a whole number of seeds >= 1",
    )
    device: str = setting("auto", "the training device", "machine", flag="--device", metavar="DEV", choices=DEVICES)
    jobs: int = setting(
        0,
        "parallel runs (0 = one per core, or every thread of the dask cluster)",
        "machine",
        flag="--jobs",
        metavar="N",
        check=(lambda v: v >= 0, "{key}={value} is invalid; use 0 (auto) or a positive number"),
    )
    threads: int = setting(
        0,
        "torch threads per worker (0 = the cores shared out among the workers)",
        "machine",
        flag="--threads",
        metavar="N",
        check=(lambda v: v >= 0, "{key}={value} is invalid; use 0 (auto) or a positive number"),
    )
    backend: str = setting(
        "loky",
        "joblib backend: local processes (loky) or a dask.distributed cluster (dask)",
        "machine",
        flag="--backend",
        metavar="NAME",
        choices=BACKENDS,
    )
    scheduler: str = setting(
        "",
        "with backend dask: the scheduler's address, e.g. tcp://head-node:8786",
        "machine",
        flag="--scheduler",
        metavar="ADDRESS",
        example='"tcp://head-node:8786"',
    )
    heartbeat: float = setting(
        20.0,
        "seconds between a busy worker's heartbeats",
        "study",
        flag="--heartbeat",
        metavar="SECONDS",
        unit="s",
        also=("worker",),
        check=(lambda v: math.isfinite(v) and v > 0, "{key}={value} is invalid; use seconds > 0, e.g. 20"),
    )
    grace_period: float = setting(
        180.0,
        "seconds of silence after which a worker's run or trial is taken over",
        "study",
        flag="--grace-period",
        metavar="SECONDS",
        unit="s",
        also=("worker",),
    )
    # Speed and cost settings: they change how fast a study runs, not its results, so they are
    # not part of the study's fingerprint.
    compile: bool = setting(
        False,
        "torch.compile each model once per worker (pays off on long GPU runs)",
        "machine",
        flag="--compile",
        kind="on",
    )
    channels_last: str = setting(
        "auto",
        "channels-last memory layout: auto (measured once per study, model and kind of device), on or off",
        "study",
        flag="--channels-last",
        metavar="MODE",
        choices=CHANNELS_LAST,
        also=("worker",),
    )
    costs: bool = setting(
        True, "measure each model's MACs, size and CPU latency once per study", "study", flag="--no-costs", kind="off"
    )
    # Convergence check (study/budget_control.py): seed 0 of each model at the smallest and largest
    # size trained again with twice the budget, in a companion study of the same store. Off by
    # default: it adds about 40% to the default study's time (see docs/report.md).
    budget_control: bool = setting(
        False,
        "after the study, retrain seed 0 of each model at the smallest and largest size with twice the budget, "
        "so the report can say whether the runs converged",
        "study",
        flag="--budget-control",
        kind="bool",
        methods=True,
    )
    # Presentation only: the report's name for each model (timm id -> name); unlisted ids get the
    # readable defaults of reports.format.DISPLAY_NAMES ("MobileViT-XXS", "ResNet-18", ...).
    display_names: dict[str, str] = setting(
        {},
        "the report's name for each model; readable defaults for common timm ids",
        "report",
        example='{ resnet18 = "ResNet-18" }',
    )
    memory_budget: str = setting(
        "",
        "memory a run's images may take on the device, e.g. 256MB or 2GB; beyond it they stream from the cache",
        "machine",
        flag="--memory-budget",
        metavar="SIZE",
        zero="half the free memory",
        example='"2GB"',
        check=(lambda v: not v or parse_bytes(v) > 0, "memory_budget={value!r} is invalid"),
    )
    data: DataConfig = field(default_factory=DataConfig)
    # [[datasets]]: several datasets, each a study "<name>/<dataset>" of its own (``dataset_studies``);
    # empty = the one dataset of [data].
    datasets: list[DatasetEntry] = setting(
        [],
        "several datasets instead of one, each a name plus [data] keys (the rest from [data]): every arm trains on "
        'every dataset, each a study "<name>/<dataset>" of its own; [[datasets]] tables work too',
        "study",
        example='[{ name = "tiny", dataset = "tiny-imagenet", root = "data/tiny-imagenet-200" }, { name = "digits" }]',
    )
    group: str = setting(
        "",
        "set by the study itself on each dataset's study: the study of several datasets it belongs to",
        "study",
        example='""',
    )
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
        check_declared(self, "")
        _check(
            bool(self.fractions) or bool(self.per_class) or bool(self.subset_lists),
            "fractions, per_class or subset_lists must name at least one size",
        )
        from study.subsets import list_name, read_list

        for path in self.subset_lists:
            read_list(path)  # exists, is text, names an image
        names = [list_name(p) for p in self.subset_lists]
        _check(len(set(names)) == len(names), f"subset_lists={self.subset_lists} names two lists alike; rename one")
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
            math.isfinite(self.grace_period) and self.grace_period > self.heartbeat,
            f"grace_period={self.grace_period} is invalid; use more seconds than heartbeat={self.heartbeat:g} (a few "
            "heartbeats), e.g. 180",
        )
        self.data.validate()
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
    return from_dict(StudyConfig, _datasets_over_data(_arms_with_models(overridden(raw, overrides))), "").validate()


# Top-level keys that describe the machine a command runs on, not the study: where it writes, and
# the settings declared with scope "machine".
MACHINE_KEYS = ("out", *(d.key for d in declared(StudyConfig) if d.setting.scope == "machine" and not d.section))


def from_stored(stored: dict[str, Any], overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Rebuild a study's config from the copy in the store (``studies.config``), with this
    machine's ``overrides`` (dotted keys, as for ``load``): how ``study worker`` joins a study
    from its storage URL alone. Keys written by an older version and unknown now are dropped;
    keys added since take their defaults; ``MACHINE_KEYS`` take this machine's flags or defaults."""
    raw = known_keys(StudyConfig, copy.deepcopy(stored))
    for key in MACHINE_KEYS:  # how the invoking machine ran it says nothing about this one
        raw.pop(key, None)
    if raw.get("arms"):  # stored arms already include those named after models
        raw.pop("models", None)
    return from_dict(StudyConfig, _datasets_over_data(_arms_with_models(overridden(raw, overrides))), "").validate()


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
            values[name] = coerce(value, hint, f"{prefix}{name}", fields[name].metadata["setting"].wrong_type)
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for the store and for fingerprints); arms as ``[[arms]]`` tables."""
    plain = dataclasses.asdict(cfg)
    if isinstance(cfg, StudyConfig):
        plain["arms"] = [arm.table() for arm in cfg.arms]
        plain["datasets"] = [entry.table() for entry in cfg.datasets]
    return plain


EXAMPLE_TOML = example_toml(StudyConfig)  # what `python -m study init` writes
