"""Assembles the report: figures, tables, Markdown and a self-contained HTML page.

``write_report`` analyses the study (``analysis.analyse``), draws every figure once as a PNG in
``report/figures/``, writes every table as CSV, and renders two Jinja2 templates from the same
context: ``report.md`` links the PNGs, ``index.html`` inlines them as base64 data URIs so the
page is one file that opens offline. Nothing depends on the clock and nothing is
resampled at random, so the same store always gives the same files.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined

from analysis.load import StudyData, load_tuning
from analysis.study_analysis import StudyAnalysis, analyse
from reports import deployment, figures
from reports import format as fmt
from reports.arms import insert_section, render_arms
from reports.narrative import answer_paragraphs, missing_summary
from study.masking import masked_url

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


def _env() -> Environment:
    # HTML is autoescaped; Markdown is not (GitHub would show &#39; as typed in the raw file),
    # its text goes through the ``md`` filter, which escapes what Markdown would misread.
    env = Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=lambda name: bool(name) and ".html" in name,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt.FILTERS)
    env.filters["p_is"] = fmt.p_is
    env.tests["missing"] = fmt.is_missing
    env.tests["infinite"] = lambda v: (
        not fmt.is_missing(v) and isinstance(v, (int, float)) and abs(float(v)) == float("inf")
    )
    env.globals["interval"] = fmt.interval
    env.globals["pp_interval"] = fmt.pp_interval
    env.globals["p_with_holm"] = fmt.p_with_holm
    env.globals["fmt"] = fmt
    return env


def _inline(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _slug(name: str) -> str:
    """A file-name-safe form of a model name (timm names may hold '/' or ':')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def curve_method_text(selection: str) -> str:
    """How each model's curve and its interval were made, in words (analysis.curves)."""
    rule = {
        "average": "an AICc-weighted average of the families that fit within ΔAICc 6 of the best",
        "aicc": "the family with the lowest AICc",
        "extrapolation": "the family with the lowest leave-last-out extrapolation error",
    }.get(selection, f"the {selection} family alone")
    return (
        f"Each model's curve is {rule}, fitted by least squares to every run on x = n / n_max; its 95% interval "
        "adds seed noise (leave-one-seed-out jackknife, Student t), the curve's lack of fit and, beyond the measured "
        "sizes, an extrapolation error that grows with log2(n / n_max) (calibrated in docs/statistics.md)"
    )


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with pandas' missing values turned into NaN/None the filters understand."""
    return [{k: (None if v is pd.NA else v) for k, v in row.items()} for row in frame.to_dict("records")]


def write_report(
    data: StudyData,
    out_dir: str | Path,
    targets: list[float] | None = None,
    tuning: Any = None,
    analysis: StudyAnalysis | None = None,
    budgets: tuple[float, float] | None = None,
) -> Path:
    """Write ``<out_dir>/report/{index.html, report.md, figures/*.png, *.csv}``; returns the folder.

    ``targets``: absolute test accuracies for the images-needed estimates (default: 90% and 95%
    of the best full-data accuracy). ``tuning``: the study's ``analysis.tuning.TuningTables``
    (read from the store when not given). ``analysis``: a ready ``StudyAnalysis`` (else computed).
    ``budgets``: (latency ms, size MB) for the "On a small device" answer (default: the study's
    ``[deploy]`` settings; 0 = no budget).
    """
    folder = Path(out_dir) / "report"
    fig_dir = folder / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):  # figures of models or sections that are gone
        stale.unlink()
    a = analysis or analyse(data, targets=targets)
    if tuning is None:
        tuning = load_tuning(data)
    figs = _draw_figures(a, tuning, fig_dir)
    deployed = deployment.load_deployment_table(a.data)
    front = deployment.draw(deployed, sorted(a.data.runs["model"].unique()), fig_dir / "accuracy_vs_latency.png")
    if front is not None:
        figs["accuracy_vs_latency"] = front
    deployment.write_csv(deployed, a.data, folder)

    for name, table in a.tables().items():
        table.to_csv(folder / f"{name}.csv", index=False)
    if tuning is not None:
        for name in ("trials", "best", "importances"):
            getattr(tuning, name).to_csv(folder / f"tuning_{name}.csv", index=False)

    context = _context(a, tuning)
    context["deployment"] = deployment.context(deployed, a.data, deployment.budgets_of(a.data, budgets))
    env = _env()
    md = env.get_template("report.md.j2").render(**context, figures={k: f"figures/{p.name}" for k, p in figs.items()})
    html = env.get_template("report.html.j2").render(**context, figures={k: _inline(p) for k, p in figs.items()})
    arms_md, arms_html = render_arms(a, env, folder)  # studies whose arms are not just their models
    md = insert_section(md, arms_md, "## Methods")
    html = insert_section(html, arms_html, '<h2 id="methods">')
    (folder / "report.md").write_text(md, encoding="utf-8")
    (folder / "index.html").write_text(html, encoding="utf-8")
    return folder


def _draw_figures(a: StudyAnalysis, tuning, fig_dir: Path) -> dict[str, Path]:
    """Every figure of the report, keyed by name; a figure with nothing to show is left out."""
    models = sorted(a.data.runs["model"].unique())
    colours = figures.model_colours(models)
    figs: dict[str, Path | None] = {}
    if len(a.summary):
        figs["learning_curves"] = figures.learning_curves(
            a.summary, fig_dir / "learning_curves.png", colours, a.bands, a.targets
        )
    if len(a.needed) and np.isfinite(a.needed["n_star"].astype(float)).any():
        figs["data_needed"] = figures.data_needed(a.needed, a.targets, fig_dir / "data_needed.png", colours)
    if len(a.ranks.ranks) >= 2:
        figs["average_ranks"] = figures.average_ranks(
            a.ranks.ranks, a.ranks.friedman, fig_dir / "average_ranks.png", colours
        )
    if len(a.answer) and a.answer["acc_largest"].notna().any():
        figs["accuracy_vs_cost"] = figures.accuracy_vs_cost(
            a.answer, a.model_costs, fig_dir / "accuracy_vs_cost.png", colours
        )
    if tuning is not None and len(tuning.trials):
        figs["tuning_history"] = figures.tuning_history(tuning.trials, fig_dir / "tuning_history.png", colours)
    used = set()
    for model in models:
        slug = _slug(model)
        while slug in used:
            slug += "_"
        used.add(slug)
        figs[f"training:{model}"] = figures.training_curves(
            a.data.epochs, a.data.done, model, fig_dir / f"training_{slug}.png", colours[model]
        )
        figs[f"confusion:{model}"] = figures.confusion_matrix(a.confusion, model, fig_dir / f"confusion_{slug}.png")
    return {k: p for k, p in figs.items() if p is not None}


def _context(a: StudyAnalysis, tuning) -> dict[str, Any]:
    data = a.data
    runs = data.runs
    counts = runs["status"].value_counts().to_dict()
    models = sorted(runs["model"].unique())
    needed_by_model = {m: _records(a.needed[a.needed["model"] == m]) for m in models}
    selected = a.fits[a.fits["selected"]]
    unfitted = a.fits[~a.fits["model"].isin(selected["model"])].drop_duplicates("model")
    severity_counts = a.warnings["severity"].value_counts().to_dict()
    return {
        "name": data.name,
        "dataset": data.dataset,
        "splits": data.splits,
        "config": data.config,
        "counts": counts,
        "total": len(runs),
        "models": models,
        "colours": figures.model_colours(models),
        "paragraphs": answer_paragraphs(a),
        "answer": _records(a.answer),
        "targets": _records(a.targets),
        "needed_by_model": needed_by_model,
        "needed": _records(a.needed),
        "ratios": _records(a.ratios),
        "scores": _records(a.scores),
        "score_differences": _records(a.score_differences.dropna(subset=["diff"])),
        "crossovers": _records(a.crossovers),
        "parameters": _records(a.curves.parameters),
        "summary": _records(a.summary),
        "per_size": _per_size(a),
        "fits": _records(selected),
        "unfitted": _records(unfitted),
        "curve_selection": a.curves.selection,
        "pairwise": _records(a.comparisons.pairwise),
        "alpha": a.comparisons.alpha,
        "seed_notes": _records(a.warnings[a.warnings["check"] == "too_few_seeds"]),
        "friedman": _records(a.ranks.friedman)[0] if len(a.ranks.friedman) else None,
        "ranks": _records(a.ranks.ranks),
        "posthoc": _records(a.ranks.posthoc),
        "model_costs": _records(a.model_costs),
        "costs_measured": bool(a.model_costs["measured"].any()),
        "unmeasured": [r["model"] for r in _records(a.model_costs) if not r["measured"]],
        "training_costs": _records(a.training_costs),
        "time_to_target": _records(a.time_to_target),
        "tuning": _tuning_context(tuning, runs),
        "details": _details(a, models),
        "warnings": _records(a.warnings),
        "n_errors": int(severity_counts.get("error", 0)),
        "n_warnings": int(severity_counts.get("warning", 0)),
        "missing": _records(missing_summary(a)),
        "methods": _methods(a),
    }


def _per_size(a: StudyAnalysis) -> list[dict]:
    """Per size, the models' mean ± std, seeds and CI (from the learning-curve summary)."""
    s = a.summary
    out = []
    for n, g in s.groupby("n_train", sort=True):
        out.append(
            {"n_train": int(n), "fraction": float(g["fraction"].mean()), "rows": _records(g.sort_values("model"))}
        )
    return out


def _tuning_context(tuning, runs: pd.DataFrame) -> dict[str, Any]:
    sources = runs["hparams_source"].dropna()
    tuned_runs = int(sources.str.startswith("tuned:").sum())
    ctx: dict[str, Any] = {
        "available": tuning is not None,
        "tuned_runs": tuned_runs,
        "config_runs": int((sources == "config").sum()),
        "best": [],
        "params": [],
        "importances": [],
        "importance_params": [],
        "n_trials": 0,
    }
    if tuning is None or tuning.best.empty:
        return ctx
    params = [c for c in tuning.best.columns if c.startswith("param_")]
    ctx["params"] = [p[len("param_") :] for p in params]
    ctx["best"] = [{**r, "params": [_param_value(r.get(p)) for p in params]} for r in _records(tuning.best)]
    ctx["n_trials"] = len(tuning.trials)
    imp = tuning.importances
    if len(imp):
        names = sorted(imp["param"].unique())
        ctx["importance_params"] = names
        for (model, kind, value), g in imp.groupby(["model", "size_kind", "size_value"], sort=True):
            values = g.set_index("param")["importance"]
            ctx["importances"].append(
                {
                    "model": model,
                    "size_kind": kind,
                    "size_value": value,
                    "values": [values.get(n, np.nan) for n in names],
                }
            )
    return ctx


def _param_value(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return fmt.MISSING
    if isinstance(v, (float, np.floating)):
        return fmt.num(v, 3)
    return str(v)


def _details(a: StudyAnalysis, models: list[str]) -> list[dict]:
    """Per model: its runs (every status) and the keys of its figures."""
    runs = a.data.runs.sort_values(["model", "n_train", "seed"])
    out = []
    for model in models:
        r = runs[runs["model"] == model].copy()
        r["error_line"] = r["error"].fillna("").map(lambda e: e.splitlines()[0] if e else "")
        out.append(
            {"model": model, "runs": _records(r), "training": f"training:{model}", "confusion": f"confusion:{model}"}
        )
    return out


def _methods(a: StudyAnalysis) -> dict[str, Any]:
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
    return {
        "sizes": _records(sizes),
        "seeds": int(data.runs["seed"].nunique()),
        "train": cfg.get("train", {}),
        "data": cfg.get("data", {}),
        "tune": tune if tune.get("trials") else {},
        "environments": list(envs.values()),
        "environment_keys": env_keys,
        "devices": sorted(data.done["device"].dropna().unique()),
        "curve_method": curve_method_text(a.curves.selection),
        "confidence": a.curves.confidence,
        "families": list(a.curves.families),
        "store": masked_url(data.storage_url) if data.storage_url else "",
    }
