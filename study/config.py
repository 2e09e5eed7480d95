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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.coerce import coerce, from_dict, known_keys, overridden, parse_bytes
from study.config_stages import (
    DEPLOY_RUNS,
    PRUNERS,
    SEQUENTIAL_MIN_SEEDS,
    DataConfig,
    DatasetEntry,
    DeployConfig,
    SequentialConfig,
    TrackingConfig,
    TuneConfig,
    _datasets_over_data,
)
from study.config_train import (
    ARM_GRAMMAR,
    ARM_KEYS,
    AUGMENT_POLICIES,
    BUDGETS,
    FINETUNE_LR,
    FINETUNE_MODES,
    NATIVE,
    NORMALIZATIONS,
    OPTIMIZERS,
    SCHEDULE_FREE_LR,
    SCRATCH_LR,
    WARMUP_DIVISOR,
    Arm,
    TrainConfig,
    _arms_with_models,
    parse_arm_spec,
)
from study.errors import UserError
from study.settings import check as _check
from study.settings import check_declared, declared, example_toml, setting

# Re-exported: the sections are declared beside, in modules named after what they configure.
__all__ = [
    "ARM_GRAMMAR",
    "ARM_KEYS",
    "AUGMENT_POLICIES",
    "BUDGETS",
    "DEPLOY_RUNS",
    "FINETUNE_LR",
    "FINETUNE_MODES",
    "NATIVE",
    "NORMALIZATIONS",
    "OPTIMIZERS",
    "PRUNERS",
    "SCHEDULE_FREE_LR",
    "SCRATCH_LR",
    "SEQUENTIAL_MIN_SEEDS",
    "WARMUP_DIVISOR",
    "Arm",
    "DataConfig",
    "DatasetEntry",
    "DeployConfig",
    "SequentialConfig",
    "StudyConfig",
    "TrainConfig",
    "TuneConfig",
    "coerce",
    "parse_arm_spec",
    "parse_bytes",
]

DEFAULT_MODELS = ["mobilevit_xxs", "mobilenetv2_100", "resnet18"]
DEVICES = ("auto", "cpu", "cuda")
CHANNELS_LAST = ("auto", "on", "off")
BACKENDS = ("loky", "dask")  # joblib backends: local processes, or a dask.distributed cluster


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
        "lists of training image names, one a line: each adds a size of exactly those images, for every seed; "
        "imagenet-1pct and imagenet-10pct name the published ImageNet lists (shipped), anything else a file",
        "study",
        flag="--subset-list",
        metavar="FILE|NAME",
        kind="append",
        example='["imagenet-1pct"]',
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
        "torch threads per run (0 = 1 on CPU, where the count changes a run's rounding and so its result; the "
        "cores shared out among the workers on a GPU)",
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
    # "on" rather than the measured "auto": layouts round differently and a plateau stop amplifies
    # it, so a choice made by timing made a rerun of the default study differ (ResNet-18, whose two
    # layouts are within 10% on a CPU, flipped between studies: docs/performance.md).
    channels_last: str = setting(
        "on",
        "channels-last memory layout: on, off, or auto (the faster, timed once per study, model and kind of "
        "device: a study may then not repeat another's results exactly)",
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
    # size given twice the optimiser steps. Under the plateau budget the run goes on after its stop
    # (only the extra steps are paid); under the fixed budget a companion study retrains it.
    budget_control: bool = setting(
        True,
        "give seed 0 of each model at the smallest and largest size twice the optimiser steps (plateau budget: "
        "the run goes on after its stop), so the report can say whether the runs converged",
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
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

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
        _check(
            not (self.data.split_per_seed and self.tune.trials),
            f"data.split_per_seed=true with tune.trials={self.tune.trials} is not supported: hyper-parameters tuned on "
            "one seed's validation images would be tested on by other seeds; set tune.trials=0 or split_per_seed=false",
        )
        self.tracking.validate()
        return self


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
    keys added since take their defaults; ``MACHINE_KEYS`` and every setting of scope "machine" (in a
    section too) take this machine's flags or defaults."""
    raw = known_keys(StudyConfig, copy.deepcopy(stored))
    machine = [d.key for d in declared(StudyConfig) if d.setting.scope == "machine"]
    for key in (*MACHINE_KEYS, *machine):  # how the invoking machine ran it says nothing about this one
        *sections, name = key.split(".")
        table = raw
        for section in sections:
            table = table.get(section) if isinstance(table, dict) else None
        if isinstance(table, dict):
            table.pop(name, None)
    if raw.get("arms"):  # stored arms already include those named after models
        raw.pop("models", None)
    return from_dict(StudyConfig, _datasets_over_data(_arms_with_models(overridden(raw, overrides))), "").validate()


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for the store and for fingerprints); arms as ``[[arms]]`` tables."""
    plain = dataclasses.asdict(cfg)
    if isinstance(cfg, StudyConfig):
        plain["arms"] = [arm.table() for arm in cfg.arms]
        plain["datasets"] = [entry.table() for entry in cfg.datasets]
    return plain


EXAMPLE_TOML = example_toml(StudyConfig)  # what `python -m study init` writes
