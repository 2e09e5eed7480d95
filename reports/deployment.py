"""The report's "On a small device" section: the study's deployed variants (``analysis.deployment``)
as tables, the accuracy-against-latency figure with the Pareto front per training-set size, the
answer under a latency / size budget, and, when nothing was deployed, how to get the section.
No torch, no ONNX Runtime: it reads the store."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.deployment import (
    INSTALL_HINT,
    best_within_budget,
    deployment_csv,
    load_deployments,
    weights_kept,
    with_front,
)
from analysis.load import StudyData
from reports import figure_style as figures
from reports import format as fmt

PRECISION_MARKERS = {"fp32": "o", "int8-dynamic": "s", "int8-static": "^"}


def load_deployment_table(data: StudyData) -> pd.DataFrame | None:
    """The study's deployments, or None where the study's database is not known."""
    if not data.storage_url:
        return None
    return load_deployments(data.storage_url, data.name)


def budgets_of(data: StudyData, budgets: tuple[float, float] | None) -> tuple[float, float]:
    """(latency ms, size MB): the given ones, else the study's stored ``[deploy]`` settings."""
    if budgets is not None:
        return float(budgets[0] or 0), float(budgets[1] or 0)
    deploy = (data.config or {}).get("deploy") or {}
    return float(deploy.get("latency_budget_ms") or 0), float(deploy.get("size_budget_mb") or 0)


def write_csv(table: pd.DataFrame | None, data: StudyData, folder: Path) -> None:
    """``deployment.csv`` (one row per arm, size, variant and thread setting); header only when none."""
    frame = deployment_csv(
        table if table is not None else pd.DataFrame(columns=["status"]), data.dataset.get("name", "")
    )
    frame.to_csv(folder / "deployment.csv", index=False)


def draw(table: pd.DataFrame | None, models: list[str], path: Path, names: dict[str, str] | None = None) -> Path | None:
    """Test accuracy against p50 latency (one thread, log scale), one panel per training-set
    size: colour = model (labelled by ``names``), marker = precision, open marker = PyTorch; the
    Pareto front as a step line through the optimal variants."""
    if table is None:
        return None
    points = with_front(table)
    if points.empty:
        return None
    colours = figures.model_colours(models)
    sizes = sorted(points["n_train"].unique())
    fig, axes = figures.plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.0), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], sizes):
        g = points[points["n_train"] == n]
        for _, r in g.iterrows():
            torch_eager = r["runtime"] == "pytorch"
            ax.scatter(
                r["latency_p50_ms_1t"],
                100 * r["test_acc"],
                s=46,
                marker=PRECISION_MARKERS.get(r["precision"], "D"),
                facecolors="none" if torch_eager else colours.get(r["model"], "#000000"),
                edgecolors=colours.get(r["model"], "#000000"),
                linewidths=1.4,
                zorder=3,
            )
        front = g[g["pareto"]].sort_values("latency_p50_ms_1t")
        ax.step(
            front["latency_p50_ms_1t"],
            100 * front["test_acc"],
            where="post",
            color="#555555",
            linewidth=1,
            linestyle="--",
            zorder=2,
            label="Pareto front",
        )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(figures.ticker.FuncFormatter(figures._compact))
        ax.xaxis.set_minor_formatter(figures.ticker.NullFormatter())
        ax.set_title(f"{fmt.count(n)} training images")
        ax.set_xlabel("latency p50, 1 thread (ms, log scale)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    handles = [
        figures.plt.Line2D([], [], color=colours[m], marker="o", linestyle="", label=(names or {}).get(m, m))
        for m in models
        if m in set(points["model"])
    ]
    handles += [
        figures.plt.Line2D([], [], color="#333333", marker=mk, linestyle="", label=f"ONNX Runtime {p}")
        for p, mk in PRECISION_MARKERS.items()
        if p in set(points.loc[points["runtime"] == "onnxruntime", "precision"])
    ]
    handles.append(
        figures.plt.Line2D([], [], color="#333333", marker="o", markerfacecolor="none", linestyle="", label="PyTorch")
    )
    handles.append(figures.plt.Line2D([], [], color="#555555", linestyle="--", label="Pareto front"))
    axes[0][-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return figures.save(fig, path)


def context(table: pd.DataFrame | None, data: StudyData, budgets: tuple[float, float]) -> dict[str, Any]:
    """What the templates' "On a small device" section shows."""
    latency, size = budgets
    deploy_cfg = (data.config or {}).get("deploy") or {}
    ctx: dict[str, Any] = {
        "rows": [],
        "failed": [],
        "choices": [],
        "latency_budget": latency,
        "size_budget": size,
        "install_hint": INSTALL_HINT,
        "onnxruntime_here": _installed("onnxruntime"),
        "enabled": bool(deploy_cfg.get("enabled", True)),
        "runs": deploy_cfg.get("runs", "best"),
        "load_average": None,
        "weights_kept": _weights_kept(data),
    }
    if table is None or table.empty:
        return ctx
    done = table[table["status"] == "done"]
    ctx["rows"] = _records(done)
    ctx["failed"] = [{**r, "reason": _reason_line(r["error"])} for r in _records(table[table["status"] != "done"])]
    loads = done["load_average_1m"].dropna().astype(float)
    ctx["load_average"] = (float(loads.min()), float(loads.max())) if len(loads) else None
    if latency or size:
        ctx["choices"] = _records(best_within_budget(table, latency, size))
    return ctx


def _weights_kept(data: StudyData) -> bool:
    return bool(data.storage_url) and weights_kept(data.storage_url, data.name)


def _installed(name: str) -> bool:
    """Whether ``name`` can be imported here (found without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken one
        return False


def _reason_line(error: str | None) -> str:
    """The first line of a stored reason (its cause, as the exporter gave it)."""
    return (error or "").strip().splitlines()[0][:300] if error else ""


def _records(frame: pd.DataFrame) -> list[dict]:
    return [
        {k: (None if v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]
