"""The report's section on arms (named ways to train, see ``study.config.Arm``): what each arm
is, and pretraining's effect where one model trains both from scratch and pretrained.

Written only for studies whose arms are not simply their models; ``write_report`` puts it
before the Methods section of both pages and writes its tables as CSV.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from jinja2 import Environment

from analysis.arms import arm_models, arm_settings, pretraining_effect, starts_pretrained
from analysis.study_analysis import StudyAnalysis


def arms_table(a: StudyAnalysis) -> pd.DataFrame:
    """One row per arm: its name, model, starting point and the ``[train]`` keys of its own."""
    pretrained = starts_pretrained(a.data)
    rows = []
    for arm, keys in arm_settings(a.data).items():
        own = {k: v for k, v in keys.items() if k != "model"}
        rows.append(
            {
                "arm": arm,
                "model": keys["model"],
                "starts_from": "pretrained weights" if pretrained[arm] else "scratch (random initialisation)",
                "settings": ", ".join(f"{k}={v}" for k, v in own.items()) or "the study's [train]",
            }
        )
    return pd.DataFrame(rows, columns=["arm", "model", "starts_from", "settings"])


def has_arms(a: StudyAnalysis) -> bool:
    """Whether the study has arms other than its models (a section on arms says something)."""
    return any(arm != model for arm, model in arm_models(a.data).items())


def unit(a: StudyAnalysis) -> str:
    """What the report's rows and legends name: 'arm' where the study has arms other than its
    models (the analysis labels results by arm), else 'model'."""
    return "arm" if has_arms(a) else "model"


def render_arms(a: StudyAnalysis, env: Environment, folder: Path) -> tuple[str, str]:
    """(Markdown, HTML) of the arms section, its tables written to ``folder`` as CSV; empty
    strings for a study whose arms are its models."""
    if not has_arms(a):
        return "", ""
    arms = arms_table(a)
    effect = pretraining_effect(a.data, a.ratios, a.needed)
    arms.to_csv(folder / "arms.csv", index=False)
    effect.to_csv(folder / "pretraining_effect.csv", index=False)
    context = {
        "arms": arms.to_dict("records"),
        "effect": effect.to_dict("records"),
        "level": 0.95,
    }
    return env.get_template("arms.md.j2").render(**context), env.get_template("arms.html.j2").render(**context)


def insert_section(page: str, section: str, before: str) -> str:
    """``page`` with ``section`` inserted before the first ``before`` (else at the end)."""
    if not section:
        return page
    at = page.find(before)
    return page + section if at < 0 else page[:at] + section + page[at:]
