"""The budget control of a study: did its runs converge under their training budget?

Under the plateau budget (the default) the control rides on the runs themselves: seed 0 of each
arm at the study's smallest and largest size, once stopped, trains as many steps again and
records what it would then have reported (``study.train``, the ``control_*`` columns of a run).
It costs those extra steps and nothing is trained twice.

Under the fixed budget the control is a small companion study in the same store, named ``<study>+budget-x2``: one seed
(seed 0) per model at the study's smallest and largest size, trained with ``FACTOR`` times the
budget (epochs and min_steps both multiplied, so every size gets that many more optimiser
steps). Seed 0 draws the same subset, initialisation and augmentation stream as the study's own
seed-0 run, so the two runs differ only in their budget. ``analysis.convergence`` compares the
control's test accuracy with that run's and with the spread over seeds.

The naming convention lives in ``study.store.schema`` (``control_name``, ``is_control``), where
the analysis reads it.
"""

from __future__ import annotations

import dataclasses

from study.config import SequentialConfig, StudyConfig, TrainConfig
from study.store.schema import BUDGET_CONTROL_FACTOR as FACTOR
from study.store.schema import control_name, is_control

__all__ = [
    "FACTOR",
    "carries_control",
    "control_config",
    "control_fields",
    "control_name",
    "is_control",
]


def _ends(cfg: StudyConfig) -> list[float]:
    """The smallest and the largest size of the study (one when it has one)."""
    sizes = sorted({value for _, value in cfg.sizes})
    return [sizes[0], sizes[-1]] if len(sizes) > 1 else sizes


def carries_control(cfg: StudyConfig, hp: TrainConfig, size_value: float, seed: int) -> bool:
    """Whether a run of ``cfg`` trained with ``hp`` carries the in-run control (plateau budget):
    seed 0 at the smallest or the largest size, with the control switched on."""
    return cfg.budget_control and hp.budget == "plateau" and seed == 0 and size_value in _ends(cfg)


def control_fields(control: dict | None) -> dict:
    """A run's in-run control (``RunResult.control``) as the store's ``control_*`` columns."""
    if control is None:
        return {}
    keys = ("val_acc", "test_acc", "gained", "lost", "steps", "seconds")
    return {f"control_{key}": control[key] for key in keys}


def control_config(cfg: StudyConfig) -> StudyConfig | None:
    """The companion control study's config for study ``cfg`` (fixed budget), or None when it has
    none: switched off, the plateau budget (whose runs carry their control), or a tuned study
    (its runs use per-cell tuned hyper-parameters, which the control would not)."""
    if not cfg.budget_control or cfg.tune.trials or cfg.train.budget == "plateau":
        return None
    ends = _ends(cfg)
    train = dataclasses.replace(cfg.train, epochs=cfg.train.epochs * FACTOR, min_steps=cfg.train.min_steps * FACTOR)
    sizes_key = "per_class" if cfg.per_class else "fractions"
    return dataclasses.replace(
        cfg,
        name=control_name(cfg.name),
        seeds=1,
        costs=False,
        budget_control=False,
        sequential=SequentialConfig(),  # one seed: the control is never sequential
        train=train,
        **{sizes_key: [int(v) for v in ends] if cfg.per_class else ends},
    ).validate()
