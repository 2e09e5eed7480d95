"""Arms in the analysis: the tables compare arms (named ways to train a model, see
``study.config.Arm``), not timm models.

Every table of the analysis groups runs by their ``model`` column; ``by_arm`` puts each run's arm
name there (keeping the timm model in ``timm_model``), so the same code labels results by arm. A
study without ``[[arms]]`` has one arm per model, named after it, and is left as it is.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.load import StudyData

PRETRAINING_COLUMNS = [
    "model",
    "scratch_arm",
    "pretrained_arm",
    "target",
    "n_scratch",
    "n_pretrained",
    "images_saved",
    "ratio",
    "bound",
    "ci_low",
    "ci_high",
    "extrapolated",
    "sentence",
]


def arm_models(data: StudyData) -> dict[str, str]:
    """Arm name -> timm model, from the study's runs (labelled by arm or not)."""
    runs = data.runs
    model = "timm_model" if "timm_model" in runs else "model"
    return dict(zip(runs["arm"], runs[model], strict=True)) if len(runs) else {}


def starts_pretrained(data: StudyData) -> dict[str, bool]:
    """Arm name -> whether its runs start from pretrained weights (timm's, or a weights file)."""
    train = data.config.get("train", {})
    study_files = {e.partition("=")[0].strip() for e in train.get("weights", []) or []}
    out = {}
    for arm, keys in arm_settings(data).items():
        files = bool(keys["weights"]) if "weights" in keys else keys["model"] in study_files
        out[arm] = bool(keys.get("pretrained", train.get("pretrained", False))) or files
    return out


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


def pretraining_effect(data: StudyData, ratios: pd.DataFrame, needed: pd.DataFrame) -> pd.DataFrame:
    """Images saved by pretraining (PRETRAINING_COLUMNS): for each model that a study trains both
    from scratch and from pretrained weights, per pair of such arms and target, n*(scratch) /
    n*(pretrained) with the interval of ``efficiency.data_ratios`` (``ratios``
    and ``needed`` are the analysis' tables, labelled by arm), and n*(scratch) - n*(pretrained).
    ``extrapolated``: either estimate lies beyond its largest measured size."""
    pretrained, models = starts_pretrained(data), arm_models(data)
    rows = []
    for model in sorted(set(models.values())):
        arms = [a for a, m in models.items() if m == model]
        for scratch in (a for a in arms if not pretrained[a]):
            for warm in (a for a in arms if pretrained[a]):
                for _, r in ratios.iterrows():
                    if {r["model_a"], r["model_b"]} != {scratch, warm}:
                        continue
                    flip = r["model_a"] == warm  # data_ratios gives n*(a) / n*(b) in name order
                    ratio, lo, hi = (r["ratio"], r["ci_low"], r["ci_high"])
                    if flip:
                        ratio, lo, hi = (_inverse(ratio), _inverse(hi), _inverse(lo))
                    bound = {">=": "<=", "<=": ">="}.get(r["bound"], r["bound"]) if flip else r["bound"]
                    n = {
                        arm: needed[(needed["model"] == arm) & (needed["target"] == r["target"])]
                        for arm in (scratch, warm)
                    }
                    n_s, n_p = (float(n[a]["n_star"].iloc[0]) if len(n[a]) else np.nan for a in (scratch, warm))
                    extrapolated = any(bool(n[a]["extrapolated"].iloc[0]) for a in n if len(n[a]))
                    at = {">=": "at least ", "<=": "at most "}.get(bound, "")
                    target = f"{r['target']:.1%}"
                    if np.isinf(n_p) or np.isinf(n_s):  # a curve that never reaches the target: no ratio to read
                        never, other = (warm, scratch) if np.isinf(n_p) else (scratch, warm)
                        sentence = f"{model}: {never} does not reach {target} on its fitted curve; {other} does"
                        if np.isinf(n_p) and np.isinf(n_s):
                            sentence = f"{model}: neither {scratch} nor {warm} reaches {target} on its fitted curve"
                        ratio = lo = hi = np.nan
                    elif np.isfinite(ratio):
                        sentence = (
                            f"{model}: from scratch ({scratch}) it needs {at}{ratio:.2g}× [{lo:.2g}, {hi:.2g}] the "
                            f"images it needs pretrained ({warm}) to reach {target}"
                        )
                    else:
                        sentence = f"{model}: no ratio of {scratch} to {warm} at {target} ({r['sentence']})"
                    if extrapolated and np.isfinite(ratio):
                        sentence += " (an estimate beyond the largest measured size: extrapolated)"
                    rows.append(
                        {
                            "model": model,
                            "scratch_arm": scratch,
                            "pretrained_arm": warm,
                            "target": r["target"],
                            "n_scratch": n_s,
                            "n_pretrained": n_p,
                            "images_saved": n_s - n_p if np.isfinite(n_s) and np.isfinite(n_p) else np.nan,
                            "ratio": ratio,
                            "bound": bound,
                            "ci_low": lo,
                            "ci_high": hi,
                            "extrapolated": extrapolated,
                            "sentence": sentence,
                        }
                    )
    return pd.DataFrame(rows, columns=PRETRAINING_COLUMNS)


def _inverse(v: float) -> float:
    if np.isnan(v):
        return np.nan
    return np.inf if v == 0 else 1.0 / v
