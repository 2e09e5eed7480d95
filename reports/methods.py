"""The report's Methods section: what was done, from the stored config and the finished runs
(sizes, seeds, the training and budget policy, every setting declared for Methods with the value
used, the command that reruns the study, the search space, the environments)."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pandas as pd

from analysis.bands import DISAGREEMENT_SD, DOUBLING_DAMPING, EXTRAPOLATION_POINT, PER_DOUBLING_SD
from analysis.load import StudyData
from analysis.study_analysis import StudyAnalysis
from study.config import StudyConfig
from study.masking import masked_url
from study.settings import methods_rows
from study.store.schema import LIST_SHA256

WARMUP_DIVISOR = 10  # study/train.py warms up over the first 1/10 of a run's steps (a test keeps the two equal)
ENVIRONMENT_KEYS = [
    "python",
    "study",
    "torch",
    "timm",
    "numpy",
    "device",
    "gpu",
    "cuda",
    "platform",
    "processor",
    "cpu_count",
    "torch_threads",
    "host",
]


def curve_method_text(selection: str) -> str:
    """How each model's curve and its interval were made, in words (analysis.curves)."""
    rule = {
        "average": "an AICc-weighted average of the families that fit within ΔAICc 6 of the best",
        "aicc": "the family with the lowest AICc",
        "extrapolation": "the family with the lowest leave-last-out extrapolation error",
    }.get(selection, f"the {selection} family alone")
    point = {
        "blend": "the mean of the curve and the last measured mean carried on by the last doubling's gain "
        f"(damped {DOUBLING_DAMPING:g}× per further doubling)",
        "gain": f"the last measured mean carried on by the last doubling's gain (damped {DOUBLING_DAMPING:g}× per "
        "further doubling)",
        "curve": "the curve itself",
    }[EXTRAPOLATION_POINT]
    disagreement = (
        f" and {DISAGREEMENT_SD:g}× the spread between the curve and the carried-on gain" if DISAGREEMENT_SD > 0 else ""
    )
    return (
        f"Each model's curve is {rule}, fitted by least squares to every run on x = n / n_max; its 95% interval "
        "adds seed noise (leave-one-seed-out jackknife, Student t), the curve's lack of fit and the spread of the "
        "averaged families about their average. Beyond the largest "
        f"measured size the reported accuracy is {point}, and the interval adds {100 * PER_DOUBLING_SD:.2f} points "
        f"per doubling outside the measured sizes{disagreement}: terms calibrated on real scikit-learn learning "
        "curves and simulated ones, not on this study's (docs/statistics.md). Every number beyond the measured "
        "sizes rests on that extrapolation and is marked extrapolated; images needed are read from the reported "
        "accuracy (the curve, and beyond the measured sizes the same point as the interval)"
    )


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with pandas' missing values turned into NaN/None the filters understand."""
    return [{k: (None if v is pd.NA else v) for k, v in row.items()} for row in frame.to_dict("records")]


def methods(a: StudyAnalysis) -> dict[str, Any]:
    """The Methods section's context for the templates."""
    data = a.data
    cfg = data.config or {}
    sizes = (
        data.runs[["size_kind", "size_value", "subset_list", "n_train", "fraction"]]
        .drop_duplicates()
        .sort_values("n_train")
    )
    envs: dict[str, dict] = {}
    for env, n in (
        data.done["environment"]
        .dropna()
        .map(lambda e: json.dumps({k: e.get(k) for k in ENVIRONMENT_KEYS if k in e}, sort_keys=True))
        .value_counts()
        .sort_index()
        .items()
    ):
        envs[env] = {**json.loads(env), "runs": int(n)}
    env_keys = [k for k in ENVIRONMENT_KEYS if any(k in e for e in envs.values())]
    tune = cfg.get("tune") or {}
    train = cfg.get("train", {})
    return {
        "sizes": _records(sizes),
        # Each subset list's file checksum, as its publisher gives it (study.plan.study_settings).
        "lists": sorted(((data.settings or {}).get(LIST_SHA256) or {}).items()),
        "seeds": int(data.runs["seed"].nunique()),
        "train": train,
        "data": cfg.get("data", {}),
        "tune": tune if tune.get("trials") else {},
        "environments": list(envs.values()),
        "environment_keys": env_keys,
        "devices": sorted(data.done["device"].dropna().unique()),
        "curve_method": curve_method_text(a.curves.selection),
        "confidence": a.curves.confidence,
        "families": list(a.curves.families),
        "resolved": resolved_settings(a),
        "steps": _steps(data),
        "policy": _policy(train),
        "command": reproduce_command(cfg, _run_lrs(data.done)),
        "store": masked_url(data.storage_url) if data.storage_url else "",
    }


def _steps(data: StudyData) -> list[dict]:
    """Per training-set size, the batch, optimiser steps per epoch, epochs and steps per run as
    the finished runs trained them (the epochs table counts the images each epoch saw)."""
    e = data.epochs.merge(data.done[["run_id", "n_train", "hparams"]], on="run_id")
    out = []
    for n, g in e.groupby("n_train", sort=True):
        last = g.sort_values("epoch").groupby("run_id").tail(1).iloc[0]
        hp = last["hparams"] if isinstance(last["hparams"], dict) else {}
        batch = min(int(hp.get("batch_size", 0) or 0), int(n)) or None
        epochs = int(last["epoch"])
        if not batch:
            continue
        steps = int(last["images_seen"]) // batch
        out.append(
            {"n_train": int(n), "batch": batch, "steps_per_epoch": steps // epochs, "epochs": epochs, "steps": steps}
        )
    return out


def _policy(train: dict) -> str:
    """The optimiser, schedule, initialisation and budget policy in words, with their values."""
    epochs, min_steps = train.get("epochs", "—"), train.get("min_steps", "—")
    optimiser = {"adamw": "AdamW (decoupled weight decay)", "adam": "Adam (L2 weight decay)", "sgd": "SGD"}.get(
        train.get("optimizer", ""), str(train.get("optimizer", "—"))
    )
    if train.get("optimizer") == "sgd":
        optimiser += " with Nesterov momentum 0.9"
    return (
        f"Every run trains for {epochs} epochs; an epoch is one pass over the run's subset, or as many passes as "
        f"give at least {min_steps} / {epochs} optimiser steps for small subsets (table below). Optimiser: "
        f"{optimiser}, weight decay {train.get('weight_decay', '—')} on weights, none on biases and normalisation "
        f"parameters. Learning rate: linear warm-up over the first 1/{WARMUP_DIVISOR} of the run's optimiser steps "
        "to its peak, then cosine decay to zero, updated every step. Initialisation: timm's for every layer except "
        "the new classifier, drawn from a normal distribution with standard deviation 0.01 truncated at two "
        "standard deviations, bias zero. Validation follows each epoch and the best epoch's weights are tested. "
        f"Normalisation: {train.get('normalization', '—')} (model: each model's own pretrained mean and std)."
    )


def resolved_settings(a: StudyAnalysis) -> list[tuple[str, str]]:
    """(setting, value used) for every setting declared for Methods, with 'auto' values replaced by
    what the runs used: the learning rate from each run's stored hyper-parameters, the input size
    from the data's image size or the measured costs."""
    cfg = a.data.config or {}
    train, data = dict(cfg.get("train", {})), cfg.get("data", {})
    done = a.data.done
    lrs = _run_lrs(done)
    if lrs:
        train["lr"] = ", ".join(f"{v:g}" for v in lrs) + (" (auto)" if not train.get("lr") else "")
    size = train.get("input_size", 0)
    if size in (0, "0", None):
        train["input_size"] = f"{data.get('image_size', '—')} px (= data.image_size)"
    elif size == "native":
        measured = a.model_costs.dropna(subset=["input_size"])
        per_model = ", ".join(f"{m} {int(v)} px" for m, v in zip(measured["model"], measured["input_size"]))
        train["input_size"] = f"native: {per_model}" if per_model else "native (each model's pretrained size)"
    else:
        train["input_size"] = f"{size} px"
    if not train.get("patience") and train.get("budget", "fixed") == "fixed":
        train["patience"] = "0 (no early stopping)"
    if not train.get("weights"):
        train["weights"] = "none"
    # Which settings are rows, and their names, come from the declarations (study/settings.py).
    shown = {f"train.{k}": str(train[k]) for k in ("lr", "input_size", "patience", "weights") if k in train}
    return methods_rows(StudyConfig, cfg, shown)


def _run_lrs(done: pd.DataFrame) -> list[float]:
    """The learning rates the finished runs used (their stored hyper-parameters), sorted."""
    return sorted({float(h["lr"]) for h in done["hparams"].dropna() if isinstance(h, dict) and h.get("lr")})


def reproduce_command(cfg: dict, lrs: list[float] | None = None) -> str:
    """A ``python -m study run`` command line that gives this study's settings explicitly; the
    learning rate as the runs used it when they all used one (an 'auto' 0 means another value
    under other defaults)."""
    train, data = dict(cfg.get("train", {})), cfg.get("data", {})
    if not train.get("lr") and lrs and len(lrs) == 1:
        train["lr"] = f"{lrs[0]:g}"
    parts = ["python -m study run"]

    def flag(name: str, value) -> None:
        if value in (None, "", [], False):
            return
        if isinstance(value, list):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        parts.append(f"--{name} {shlex.quote(str(value))}")

    flag("name", cfg.get("name"))
    flag("dataset", data.get("dataset"))
    flag("models", cfg.get("models"))
    flag("per-class" if cfg.get("per_class") else "fractions", cfg.get("per_class") or cfg.get("fractions"))
    flag("seeds", cfg.get("seeds"))
    budget = ("epochs", "min_steps") if train.get("budget", "fixed") == "fixed" else ("max_steps", "min_gain")
    for key in ("budget", "patience", *budget, "batch_size", "lr", "augment", "input_size"):
        if key in train:  # a patience of 0 (never stop early) is a value, not an absence
            flag(key.replace("_", "-"), str(train[key]) if key == "patience" else train[key])
    flag("image-size", data.get("image_size"))
    if train.get("pretrained"):
        parts.append("--pretrained")
    if "budget_control" in cfg:  # on by default since the plateau budget, off before
        parts.append("--budget-control" if cfg["budget_control"] else "--no-budget-control")
    return " ".join(parts)
