"""Assembles the report: figures, tables, Markdown and a self-contained HTML page.

``write_report`` analyses the study (``analysis.analyse``), draws every figure once as a PNG in
``report/figures/``, writes every table as CSV, and renders two Jinja2 templates from the same
context: ``report.md`` links the PNGs, ``index.html`` inlines them as base64 data URIs so the
page is one file that opens offline. Nothing depends on the clock and nothing is
resampled at random, so the same store always gives the same files.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined

from analysis.confusion import confusion_matrices
from analysis.convergence import GAIN_FLOOR, LEVEL, NOISE_MULTIPLE, RISE_TOLERANCE
from analysis.load import StudyData, load_control, load_tuning
from analysis.split_variance import split_variance
from analysis.study_analysis import StudyAnalysis, analyse
from reports import deployment, figure_style, figures, run_figures
from reports import format as fmt
from reports import tables as paper
from reports.arms import insert_section, render_arms, unit
from reports.methods import methods
from reports.narrative import answer_paragraphs, missing_summary
from reports.sequential import render_sequential
from reports.verdict import MARGIN, verdict


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
    for fmt_ in figure_style.FORMATS:  # figures of models or sections that are gone
        for stale in fig_dir.glob(f"*.{fmt_}"):
            stale.unlink()
    a = analysis or analyse(data, targets=targets, control=load_control(data))
    if tuning is None:
        tuning = load_tuning(data)
    names = fmt.display_names(data.config, sorted(a.data.runs["model"].unique()))  # arms where a study has them
    figs = _draw_figures(a, tuning, fig_dir, names)
    deployed = deployment.load_deployment_table(a.data)
    front = deployment.draw(deployed, sorted(a.data.runs["model"].unique()), fig_dir / "accuracy_vs_latency.png", names)
    if front is not None:
        figs["accuracy_vs_latency"] = front
    deployment.write_csv(deployed, a.data, folder)

    for name, table in a.tables().items():
        table.to_csv(folder / f"{name}.csv", index=False)
    main = _main_tables(a, names)
    paper.write_tables({k: (t, caption) for k, (t, caption, _) in main.items()}, folder)
    if tuning is not None:
        for name in ("trials", "best", "importances"):
            getattr(tuning, name).to_csv(folder / f"tuning_{name}.csv", index=False)

    context = _context(a, tuning, names, main)
    context["deployment"] = deployment.context(deployed, a.data, deployment.budgets_of(a.data, budgets))
    env = _env()
    md = env.get_template("report.md.j2").render(**context, figures={k: f"figures/{p.name}" for k, p in figs.items()})
    html = env.get_template("report.html.j2").render(**context, figures={k: _inline(p) for k, p in figs.items()})
    arms_md, arms_html = render_arms(a, env, folder)  # studies whose arms are not just their models
    md = insert_section(md, arms_md, "## Methods")
    html = insert_section(html, arms_html, '<h2 id="methods">')
    sequential_md, sequential_html = render_sequential(a, env, folder)  # studies run with --until-ci
    md = insert_section(md, sequential_md, "## Methods")
    html = insert_section(html, sequential_html, '<h2 id="methods">')
    (folder / "report.md").write_text(md, encoding="utf-8")
    (folder / "index.html").write_text(html, encoding="utf-8")
    return folder


def on_test_words(split_per_seed: bool) -> str:
    """What a seed-only interval is over: one test set for every seed, or each seed's own split
    (then the spread over seeds carries the test-set sampling too)."""
    return "each seed on its own test split" if split_per_seed else "on this test set"


def _main_tables(a: StudyAnalysis, names: dict[str, str]) -> dict[str, tuple[pd.DataFrame, str, list[str]]]:
    """The paper tables: name -> (table, caption, notes on columns left out)."""
    level = f"{100 * a.curves.confidence:g}%"
    on_test = on_test_words(a.data.split_per_seed)
    shared = "each seed's own test split" if a.data.split_per_seed else "the shared test set"
    rows = unit(a)  # what the first column names: arms or models
    pairs, pair_notes = paper.pairs_table(a, names)
    return {
        "table_accuracy": (
            paper.accuracy_table(a, names),
            f"Test accuracy (mean over seeds, {level} CI for the population the test set was drawn from: seeds and "
            f"test-set sampling) and macro-F1 (mean) per {rows} and training-set size.",
            [],
        ),
        "table_pairs": (
            pairs,
            f"Paired differences in test accuracy (better {rows} first), paired by seed on {shared} ("
            f"{level} CI over seeds {on_test}); secondary to the primary comparison; significant: paired "
            f"t-test, Holm-adjusted at {a.comparisons.alpha:g}; tie: not significant and the difference's 95% CI "
            f"within {MARGIN}.",
            pair_notes,
        ),
        "table_costs": (
            paper.costs_table(a, names),
            f"Inference cost per {rows}: CPU latency at batch 1 (p50 / p95 over repeated timings).",
            [],
        ),
        "table_convergence": (
            paper.convergence_table(a, names),
            f"Convergence per {rows} and size (definition in the report's Convergence section).",
            [],
        ),
    }


def _draw_figures(a: StudyAnalysis, tuning, fig_dir: Path, names: dict[str, str]) -> dict[str, Path]:
    """Every figure of the report, keyed by name; a figure with nothing to show is left out."""
    models = sorted(a.data.runs["model"].unique())
    colours = figure_style.model_colours(models)
    figs: dict[str, Path | None] = {}
    if len(a.summary):
        figs["learning_curves"] = figures.learning_curves(
            a.summary, fig_dir / "learning_curves.png", colours, a.bands, a.targets, names
        )
    if len(a.needed) and np.isfinite(a.needed["n_star"].astype(float)).any():
        figs["data_needed"] = figures.data_needed(a.needed, a.targets, fig_dir / "data_needed.png", colours, names)
    if len(a.ranks.ranks) >= 2:
        figs["average_ranks"] = figures.average_ranks(
            a.ranks.ranks, a.ranks.friedman, fig_dir / "average_ranks.png", colours, names
        )
    if len(a.answer) and a.answer["acc_largest"].notna().any():
        figs["accuracy_vs_cost"] = figures.accuracy_vs_cost(
            a.answer, a.model_costs, fig_dir / "accuracy_vs_cost.png", colours, names
        )
    if a.convergence_runs is not None and a.convergence is not None and len(a.convergence_runs):
        figs["convergence"] = run_figures.convergence(
            a.convergence_runs, a.convergence, fig_dir / "convergence.png", RISE_TOLERANCE, colours, names, LEVEL
        )
    if tuning is not None and len(tuning.trials):
        figs["tuning_history"] = run_figures.tuning_history(
            tuning.trials, fig_dir / "tuning_history.png", colours, names
        )
    done = a.data.done
    sizes = sorted(int(n) for n in done["n_train"].unique())
    confusions = [confusion_matrices(a.data, n) for n in dict.fromkeys([sizes[0], sizes[-1]])] if sizes else []
    loss = a.data.epochs[["train_loss", "val_loss"]].to_numpy(float) if len(a.data.epochs) else np.empty(0)
    loss_max = float(np.nanpercentile(loss, 99)) * 1.05 if loss.size else None  # one loss scale for every model
    used = set()
    for model in models:
        slug = _slug(model)
        while slug in used:
            slug += "_"
        used.add(slug)
        figs[f"training:{model}"] = run_figures.training_curves(
            a.data.epochs, done, model, fig_dir / f"training_{slug}.png", colours[model], sizes, loss_max
        )
        figs[f"confusion:{model}"] = run_figures.confusion_matrix(
            confusions, model, fig_dir / f"confusion_{slug}.png", names
        )
    return {k: p for k, p in figs.items() if p is not None}


def _table(table: pd.DataFrame) -> dict[str, Any]:
    """A display table for the templates: its header and rows of strings, and header groups
    where columns are named 'group: column' (the main table's sizes)."""
    columns = list(table.columns)
    groups: list[list] = []
    if len(columns) > 1 and all(": " in c for c in columns[1:]):
        for c in columns[1:]:
            group = c.split(": ", 1)[0]
            if groups and groups[-1][0] == group:
                groups[-1][1] += 1
            else:
                groups.append([group, 1])
    return {
        "columns": columns,
        "short": [columns[0]] + [c.split(": ", 1)[-1] for c in columns[1:]] if groups else columns,
        "groups": groups,
        "rows": [list(r) for r in table.itertuples(index=False)],
    }


def _context(a: StudyAnalysis, tuning, names: dict[str, str], main: dict) -> dict[str, Any]:
    data = a.data
    runs = data.runs
    counts = runs["status"].value_counts().to_dict()
    models = sorted(runs["model"].unique())
    needed_by_model = {m: _records(a.needed[a.needed["model"] == m]) for m in models}
    selected = a.fits[a.fits["selected"]]
    unfitted = a.fits[~a.fits["model"].isin(selected["model"])].drop_duplicates("model")
    severity_counts = a.warnings["severity"].value_counts().to_dict()
    carried = "control_test_acc" in data.done and bool(data.done["control_test_acc"].notna().any())
    return {
        "name": data.name,
        "dataset": data.dataset,
        "splits": data.splits,
        "split_variance": _records(split_variance(data)),  # data.split_per_seed only
        "on_test": on_test_words(data.split_per_seed),
        "config": data.config,
        "counts": counts,
        "total": len(runs),
        "models": models,
        "colours": figure_style.model_colours(models),
        "paragraphs": answer_paragraphs(a, names),
        "names": names,
        "unit": unit(a),
        "verdict": verdict(a, names),
        "paper": {k: {**_table(t), "caption": caption, "notes": notes} for k, (t, caption, notes) in main.items()},
        "convergence_counts": _convergence_counts(a),
        "unconverged": _unconverged(a, names),
        "convergence_rules": {
            "rise": 100 * RISE_TOLERANCE,
            "floor": 100 * GAIN_FLOOR,
            "multiple": NOISE_MULTIPLE,
            "level": 100 * LEVEL,
            "gain_rule": _gain_rule(a),
            "control": a.control is not None or carried,
            "plateau": paper.plateau_budget(a),
            "train": (data.config or {}).get("train") or {},
            # cells with a control gain: the convergence figure's lower panel
            "controlled": a.convergence is not None and bool(a.convergence["control_gain"].notna().any()),
        },
        "answer": _records(a.answer),
        "targets": _records(a.targets),
        "needed_by_model": needed_by_model,
        "needed": _records(a.needed),
        "ratios": _records(a.ratios),
        "scores": _records(a.scores),
        "score_differences": _records(paper.oriented_pairs(a.score_differences.dropna(subset=["diff"]))),
        "crossovers": _records(a.crossovers),
        "parameters": _records(a.curves.parameters),
        "summary": _records(a.summary),
        "per_size": _per_size(a),
        "fits": _records(selected),
        "unfitted": _records(unfitted),
        "curve_selection": a.curves.selection,
        "pairwise": _records(a.comparisons.pairwise),
        "alpha": a.comparisons.alpha,
        "margin": MARGIN,
        "seed_notes": _records(a.warnings[a.warnings["check"] == "too_few_seeds"]),
        "friedman": _records(a.ranks.friedman)[0] if len(a.ranks.friedman) else None,
        "ranks": _records(a.ranks.ranks),
        "posthoc": _records(a.ranks.posthoc),
        "model_costs": _records(a.model_costs),
        "costs_measured": bool(a.model_costs["measured"].any()),
        "unmeasured": [names.get(r["model"], r["model"]) for r in _records(a.model_costs) if not r["measured"]],
        "training_costs": _records(a.training_costs),
        "time_to_target": _records(a.time_to_target),
        "tuning": _tuning_context(tuning, runs),
        "details": _details(a, models),
        "warnings": _records(a.warnings),
        "n_errors": int(severity_counts.get("error", 0)),
        "n_warnings": int(severity_counts.get("warning", 0)),
        "missing": _records(missing_summary(a)),
        "methods": methods(a),
    }


def _unconverged(a: StudyAnalysis, names: dict[str, str]) -> list[str]:
    """Per model whose cells had not converged: 'MobileNetV2 at 116 and 1,151 images'."""
    cells = a.convergence
    if cells is None or cells.empty:
        return []
    out = []
    for model, g in cells[~cells["converged"]].groupby("model", sort=True):
        sizes = [fmt.count(n) for n in sorted(g["n_train"])]
        everywhere = len(g) == int((cells["model"] == model).sum())
        out.append(
            f"{names[model]} at {'every size' if everywhere and len(g) > 1 else fmt.join_words(sizes) + ' images'}"
        )
    return out


def _gain_rule(a: StudyAnalysis) -> str:
    """What the budget control's gain had to exceed for 'not converged', in words."""
    rule = (
        f"higher by more than {NOISE_MULTIPLE:g} × the cell's seed standard deviation (and at least "
        f"{100 * GAIN_FLOOR:g} pp)"
    )
    c = a.convergence
    if c is not None and "control_bound" in c and c["control_bound"].notna().any():
        rule += (
            f" beyond its own noise: its one-sided {100 * LEVEL:g}% lower bound, paired over the test images the "
            "extra steps changed, above that"
        )
    return rule


def _convergence_counts(a: StudyAnalysis) -> dict[str, int]:
    runs, cells = a.convergence_runs, a.convergence
    if runs is None or cells is None:
        return {"runs": 0, "best_is_last": 0, "rising": 0, "capped": 0, "cells": 0, "not_converged": 0}
    return {
        "runs": len(runs),
        "best_is_last": int(runs["best_is_last"].sum()),
        "rising": int(runs["rising"].sum()),
        "capped": int(runs["capped"].sum()),
        "cells": len(cells),
        "not_converged": int((~cells["converged"]).sum()),
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
