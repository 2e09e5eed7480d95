"""The budget control of a study: did its runs converge under their training budget?

The control is a small companion study in the same store, named ``<study>+budget-x2``: one seed
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

from study.config import SequentialConfig, StudyConfig
from study.store.schema import BUDGET_CONTROL_FACTOR as FACTOR
from study.store.schema import control_name, is_control

__all__ = ["FACTOR", "control_config", "control_name", "is_control", "run_control"]


def control_config(cfg: StudyConfig) -> StudyConfig | None:
    """The budget control's config for study ``cfg``, or None when it has none: switched off,
    or a tuned study (its runs use per-cell tuned hyper-parameters, which the control would not)."""
    if not cfg.budget_control or cfg.tune.trials:
        return None
    sizes = sorted({value for _, value in cfg.sizes})
    ends = [sizes[0], sizes[-1]] if len(sizes) > 1 else sizes
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


def run_control(cfg: StudyConfig, quiet: bool) -> None:
    """Train the study's budget control when it has one (after the study's own runs)."""
    control = control_config(cfg)
    if control is None:
        return
    from study.execute import execute
    from study.plan import open_context

    print(f"budget control: seed 0 at the smallest and largest size with {FACTOR}x the budget ({control.name!r})")
    ctx = open_context(control)
    counts = execute(control, ctx.study_id, ctx.store, progress=not quiet)
    print(f"budget control: {counts['done']} done, {counts['failed']} failed")
