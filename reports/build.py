"""Assembles the report: figures, tables, Markdown and a self-contained HTML page."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from analysis.curves import summarize
from analysis.load import StudyData, results_table
from reports import figures


def _env() -> Environment:
    env = Environment(loader=PackageLoader("reports", "templates"), autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "" if pd.isna(v) else f"{100 * v:.1f}%"
    return env


def _inline(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_report(data: StudyData, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/report/{index.html, report.md, figures/*.png, *.csv}``; returns the folder."""
    folder = Path(out_dir) / "report"
    fig_dir = folder / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    done = data.done
    counts = data.runs["status"].value_counts().to_dict()
    summary = summarize(done) if len(done) else pd.DataFrame(columns=["model", "n_train", "fraction", "n_seeds", "mean", "std", "ci_low", "ci_high"])
    figs = {}
    if len(summary):
        figs["learning_curves"] = figures.learning_curves(summary, fig_dir / "learning_curves.png")
    summary.to_csv(folder / "learning_curve.csv", index=False)
    results_table(data).to_csv(folder / "results.csv", index=False)
    failed = data.runs[data.runs["status"] == "failed"][["model", "n_train", "seed", "error"]]
    context = {
        "name": data.name,
        "dataset": data.dataset,
        "splits": data.splits,
        "config": data.config,
        "counts": counts,
        "total": len(data.runs),
        "summary": summary.to_dict("records"),
        "failed": failed.to_dict("records"),
        "warnings": list(data.splits.get("warnings", [])),
    }
    env = _env()
    (folder / "report.md").write_text(env.get_template("report.md.j2").render(**context, figures={k: f"figures/{p.name}" for k, p in figs.items()}))
    (folder / "index.html").write_text(env.get_template("report.html.j2").render(**context, figures={k: _inline(p) for k, p in figs.items()}))
    return folder
