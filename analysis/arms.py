"""Arms in the analysis: the tables compare arms (named ways to train a model, see
``study.config.Arm``), not timm models.

Every table of the analysis groups runs by their ``model`` column; ``by_arm`` puts each run's arm
name there (keeping the timm model in ``timm_model``), so the same code labels results by arm. A
study without ``[[arms]]`` has one arm per model, named after it, and is left as it is.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from analysis.load import StudyData


def arm_models(data: StudyData) -> dict[str, str]:
    """Arm name -> timm model, from the study's runs."""
    runs = data.runs
    return dict(zip(runs["arm"], runs["model"], strict=True)) if len(runs) else {}


def arm_settings(data: StudyData) -> dict[str, dict]:
    """Arm name -> what defines it (its model and its own ``[train]`` keys), as the study stored
    it; arms of a study written before arms are their models, with the study's ``[train]``."""
    stored = data.settings.get("arms") or {}
    return {arm: stored.get(arm, {"model": model}) for arm, model in sorted(arm_models(data).items())}


def by_arm(data: StudyData) -> StudyData:
    """``data`` with its runs labelled by arm: ``model`` holds the arm's name and ``timm_model``
    the model; each arm gets its model's costs at the input size it trains at."""
    models = arm_models(data)
    if all(arm == model for arm, model in models.items()):
        return data
    runs = data.runs.copy()
    runs.insert(runs.columns.get_loc("model") + 1, "timm_model", runs["model"])
    runs["model"] = runs["arm"]
    costs = pd.DataFrame(
        [row for arm, model in models.items() if (row := _arm_costs(data, arm, model)) is not None],
        columns=data.costs.columns,
    )
    return dataclasses.replace(data, runs=runs, costs=costs)


def _arm_costs(data: StudyData, arm: str, model: str) -> dict | None:
    """The ``model_costs`` row of ``arm``'s model at the size it trains at, relabelled ``arm``."""
    rows = data.costs[data.costs["model"] == model]
    if rows.empty:
        return None
    image_size = int(data.config.get("data", {}).get("image_size", 0) or 0)
    size = arm_settings(data)[arm].get("input_size", data.config.get("train", {}).get("input_size", 0))
    wanted = image_size if size in (0, "0", None) else (int(size) if str(size).isdigit() else None)
    if wanted is not None and (rows["input_size"] == wanted).any():
        row = rows[rows["input_size"] == wanted].iloc[0]
    elif wanted is None and (rows["input_size"] != image_size).any():  # "native": the model's own size
        row = rows[rows["input_size"] != image_size].iloc[0]
    else:
        row = rows.iloc[0]
    return {**row.to_dict(), "model": arm}
