"""How one run trains: ``[train]`` (``TrainConfig``), each setting declared once, and the arms, named
ways to train that set ``[train]`` keys of their own (``[[arms]]``, ``--arm``)."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from study.coerce import coerce
from study.errors import UserError
from study.settings import check as _check
from study.settings import check_declared, setting

AUGMENT_POLICIES = ("none", "light", "standard", "strong", "trivial")
NORMALIZATIONS = ("model", "imagenet", "half")
OPTIMIZERS = ("adamw", "adam", "sgd")
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
# How long a run trains (``TrainConfig.budget``): until validation accuracy stops improving
# (schedule-free optimisation, no planned end), or a fixed number of epochs on a cosine schedule.
BUDGETS = ("plateau", "fixed")


@dataclass(frozen=True)
class TrainConfig:
    """How one run trains: the defaults of the hyper-parameters and the budget policy."""

    # plateau: a run trains until validation accuracy has not gained ``min_gain`` points for
    # ``patience`` epochs nor for as long again as its last gain took, under a cap of ``max_steps``
    # (study/plateau.py). Patience 6 and a 1-point gain (3 of the 287 validation images) were chosen
    # by replaying six rules on 24 recorded runs of the default study (benchmarks/bench_control.py):
    # the only one that capped no run and left no cell gaining over 1 point from twice the steps
    # (docs/report.md, "The default budget"). fixed: ``epochs`` epochs on a warm-up + cosine schedule.
    budget: str = setting(
        "plateau",
        "how long a run trains: plateau (until validation stops improving, under max_steps) | fixed (epochs "
        "epochs on a cosine schedule)",
        "arm",
        flag="--budget",
        metavar="POLICY",
        choices=BUDGETS,
    )
    # An epoch is one pass over the run's subset, or min_steps / epochs optimiser steps when a pass is
    # shorter (20 steps by default): validation runs after each. Under the fixed budget, 8 epochs and at
    # least 160 steps: 160, 160, 160 and 288 steps at 10 / 25 / 50 / 100% of digits.
    epochs: int = setting(
        8,
        "fixed budget: epochs per run; both budgets: an epoch is a pass over the run's subset, or min_steps / "
        "epochs optimiser steps when a pass is shorter",
        "arm",
        flag="--epochs",
        metavar="N",
        check=(lambda v: v >= 1, "{key}={value} must be at least 1"),
    )
    min_steps: int = setting(
        160,
        "fixed budget: floor on optimiser steps per run, so that small subsets are not starved; with epochs, an "
        "epoch's shortest length",
        "arm",
        flag="--min-steps",
        metavar="N",
        check=(lambda v: v >= 0, "{key}={value} must be 0 or more"),
    )
    patience: int = setting(
        6,
        "epochs without a validation gain of min_gain points before a run stops, and plateau budget: at least as "
        "many as its last gain took (fixed budget: 0 = never)",
        "arm",
        flag="--patience",
        metavar="N",
    )
    min_gain: float = setting(
        1.0,
        "validation accuracy points that count as an improvement",
        "arm",
        flag="--min-gain",
        metavar="POINTS",
        unit="accuracy points",
        check=(lambda v: 0 <= v <= 10, "{key}={value} is invalid; use validation accuracy points in [0, 10]"),
    )
    max_steps: int = setting(
        2000,
        "plateau budget: cap on a run's optimiser steps (a run reaching it is capped, not converged)",
        "arm",
        flag="--max-steps",
        metavar="N",
    )
    warmup_steps: int = setting(
        20,
        "plateau budget: optimiser steps of linear learning-rate warm-up",
        "arm",
        flag="--warmup-steps",
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
        "peak learning rate (auto: from scratch 1e-2 plateau, 4e-3 fixed; 1e-4 when fine-tuning pretrained weights)",
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
    input_size: int | str = setting(
        0,
        "model input side (0 = data.image_size, native = each model's pretrained size)",
        "arm",
        flag="--input-size",
        metavar="PX|native",
        zero="0 = data.image_size",
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
        if self.budget == "plateau":
            _check(
                self.patience >= 1,
                f"train.patience={self.patience} is invalid with train.budget='plateau'; use 1 or more epochs",
            )
        else:
            _check(self.patience >= 0, f"train.patience={self.patience} must be 0 (off) or more")
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

    @classmethod
    def from_table(cls, table: Any) -> Arm:
        """An ``[[arms]]`` table as an Arm (``_arm``)."""
        return _arm(table)


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
