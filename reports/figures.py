"""The figures that answer the study's questions (learning curves, data needed, ranks, accuracy
against cost); the per-run and tuning figures are in ``run_figures.py``, the shared look in
``figure_style.py``.
One function per figure; each takes DataFrames and writes it as PNG, PDF and SVG, with display
names (``names``: timm id -> name) as labels and no titles: the report's captions say what a
figure shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reports.figure_style import (
    TARGET_STYLE,
    X_RANGE,
    _accuracy_axis,
    _colours,
    _compact,
    _log_axis,
    _name,
    model_markers,
    plt,
    save,
    ticker,
)


def learning_curves(
    summary: pd.DataFrame,
    path: Path,
    colours: dict[str, str] | None = None,
    bands: pd.DataFrame | None = None,
    targets: pd.DataFrame | None = None,
    names: dict[str, str] | None = None,
    x_range: float = X_RANGE,
) -> Path:
    """Mean test accuracy against training-set size (log axis) with its 95% CI over seeds (error
    bars), one colour and marker per model; the fitted curve (``analysis.curves.curve_bands``)
    solid over the measured sizes and dashed beyond them, up to ``x_range`` times the largest
    measured size, with its 95% interval (seed noise, lack of fit, spread of the families,
    extrapolation); target accuracies as dotted lines labelled outside the axes, where they hide
    no data. A model without a fit has its means joined by a thin line."""
    colours = _colours(summary["model"].unique(), colours)
    markers = model_markers(list(colours))
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    n_max = float(summary["n_train"].max())
    if bands is not None and len(bands):
        bands = bands[bands["n_train"] <= x_range * n_max * (1 + 1e-9)]
    fitted = set(bands["model"]) if bands is not None and len(bands) else set()
    for model, group in summary.groupby("model", sort=True):
        group = group.sort_values("n_train")
        c = colours[model]
        err = np.vstack([group["mean"] - group["ci_low"].clip(0, 1), group["ci_high"].clip(0, 1) - group["mean"]])
        ax.errorbar(
            group["n_train"],
            group["mean"],
            yerr=err,
            fmt=markers[model],
            color=c,
            capsize=3,
            label=_name(names, model),
            linestyle="none" if model in fitted else "-",
            linewidth=1,
            markersize=5,
            zorder=3,
        )
        if model in fitted:
            b = bands[bands["model"] == model].sort_values("n_train")
            inside, beyond = b[~b["extrapolated"]], b[b["extrapolated"]]
            ax.plot(inside["n_train"], inside["fit"], color=c, linewidth=1.8, zorder=2)
            if len(beyond):  # start the dashed part at the last measured point, so the line is continuous
                ext = pd.concat([inside.tail(1), beyond])
                ax.plot(ext["n_train"], ext["fit"], color=c, linewidth=1.5, linestyle="--", zorder=2)
            ax.fill_between(b["n_train"], b["ci_low"], b["ci_high"], color=c, alpha=0.15, linewidth=0, zorder=1)
    if targets is not None:
        for t in targets.itertuples():
            ax.axhline(t.target, **TARGET_STYLE, zorder=0)
            ax.annotate(
                f"{100 * t.target:.1f}%",
                (1.01, t.target),
                xycoords=("axes fraction", "data"),
                ha="left",
                va="center",
                fontsize=8,
                color=TARGET_STYLE["color"],
                annotation_clip=False,
            )
    shown = [summary["ci_low"].min(), summary["ci_high"].max(), summary["mean"].min(), summary["mean"].max()]
    if targets is not None and len(targets):
        shown += [targets["target"].min(), targets["target"].max()]
    if fitted:
        shown += [bands["fit"].min(), bands["fit"].max(), bands["ci_high"].max()]
    _accuracy_axis(ax, float(np.nanmin(shown)), float(np.nanmax(shown)))
    _log_axis(ax)
    ax.set_xlim(float(summary["n_train"].min()) / 1.15, n_max * (x_range if fitted else 1.15))
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("test accuracy")
    ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(frameon=False, loc="lower right")
    return save(fig, path)


def data_needed(
    needed: pd.DataFrame,
    targets: pd.DataFrame,
    path: Path,
    colours: dict[str, str] | None = None,
    names: dict[str, str] | None = None,
    x_range: float = X_RANGE,
) -> Path:
    """Images needed to reach each target (``analysis.efficiency.data_needed``), per model, with
    their 95% intervals; log axis up to ``x_range`` times the largest measured size. Three kinds
    of point, each drawn its own way: an estimate inside the measured range (filled circle), one
    beyond the largest measured size (hollow circle: extrapolated), and one censored at the
    smallest measured size (◁ at that size: the model needs at most that many). Estimates past
    the axis are written at its edge; unreached targets are written instead of drawn."""
    colours = _colours(needed["model"].unique(), colours)
    models = sorted(needed["model"].unique())
    tlist = list(targets["target"])
    fig, ax = plt.subplots(figsize=(7.0, 0.5 + 0.45 * len(models) * len(tlist) + 0.6))
    y, labels = 0, []
    n_max = float(needed["n_max_measured"].max())
    right = x_range * n_max
    for ti, target in enumerate(tlist):
        for model in models:
            r = needed[(needed["model"] == model) & (needed["target"] == target)]
            labels.append(f"{_name(names, model)} @ {100 * target:.1f}%")
            if len(r):
                r = r.iloc[0]
                n, lo, hi = float(r["n_star"]), float(r["ci_low"]), float(r["ci_high"])
                c = colours[model]
                if not np.isfinite(n):
                    ax.annotate(
                        r["status"], (0.02, y), xycoords=("axes fraction", "data"), va="center", fontsize=8, color=c
                    )
                elif n > right:
                    ax.annotate(
                        f"→ {n:,.0f} (extrapolated)",
                        (0.98, y),
                        xycoords=("axes fraction", "data"),
                        ha="right",
                        va="center",
                        fontsize=8,
                        color=c,
                    )
                else:
                    lo_drawn = lo if np.isfinite(lo) else n
                    hi_drawn = min(hi, right) if np.isfinite(hi) else right
                    censored, beyond = bool(r["upper_bound"]), n > float(r["n_max_measured"])
                    ax.errorbar(
                        [n],
                        [y],
                        # NaN bounds: no interval (too few seeds), so no bar
                        xerr=None if np.isnan(lo) or np.isnan(hi) else [[max(n - lo_drawn, 0)], [max(hi_drawn - n, 0)]],
                        fmt="<" if censored else "o",
                        color=c,
                        capsize=3,
                        markersize=7 if censored else 6,
                        markerfacecolor="white" if beyond else c,
                    )
            y += 1
        if ti < len(tlist) - 1:
            ax.axhline(y - 0.5, color="#cccccc", linewidth=0.8)
    ax.axvline(n_max, **TARGET_STYLE)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    _log_axis(ax)
    low = float(np.nanmin(pd.to_numeric(needed["ci_low"], errors="coerce").tolist() + [needed["n_max_measured"].min()]))
    ax.set_xlim(max(low, 1.0) / 1.3, right)
    ax.set_xlabel("training images needed (log scale; dotted: largest measured size)")
    handles = [
        plt.Line2D([], [], marker="o", color="#444444", linestyle="none", label="estimate"),
        plt.Line2D(
            [], [], marker="o", color="#444444", markerfacecolor="white", linestyle="none", label="extrapolated"
        ),
        plt.Line2D([], [], marker="<", color="#444444", linestyle="none", label="at most (smallest size)"),
    ]
    ax.legend(
        handles=handles,
        frameon=False,
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 - 0.6 / (y + 2)),
        ncol=3,
    )
    ax.grid(True, axis="x", which="major", alpha=0.3)
    return save(fig, path)


def _cliques(ranks: pd.Series, cd: float) -> list[tuple[int, int]]:
    """Maximal runs of models (in rank order) whose ranks differ by less than ``cd``: the bars
    of a critical-difference diagram, joining models not significantly different."""
    values = ranks.to_numpy()
    out = []
    for i in range(len(values)):
        j = i
        while j + 1 < len(values) and values[j + 1] - values[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in out):
            out.append((i, j))
    return out


def average_ranks(
    ranks: pd.DataFrame,
    friedman: pd.DataFrame,
    path: Path,
    colours: dict[str, str] | None = None,
    names: dict[str, str] | None = None,
) -> Path:
    """Critical-difference diagram: average rank of each model over the seeds (ranks averaged over sizes)
    (1 = most accurate), the Nemenyi critical difference as a scale bar, and thick bars joining
    models whose ranks are closer than it (not significantly different)."""
    colours = _colours(ranks["model"], colours)
    r = ranks.sort_values("average_rank").reset_index(drop=True)
    k = len(r)
    f = friedman.iloc[0]
    cd = float(f["critical_difference"])
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.35 * k))
    ax.set_xlim(0.8, max(k, 2) + 0.2)
    ax.set_ylim(-0.6 - 0.25 * k, 1.3)
    ax.axhline(0, color="black", linewidth=1)
    for x in range(1, max(k, 2) + 1):
        ax.plot([x, x], [0, 0.08], color="black", linewidth=1)
        ax.annotate(str(x), (x, 0.12), ha="center", fontsize=9)
    for i, row in r.iterrows():
        y = -0.35 - 0.3 * i
        ax.plot([row["average_rank"]] * 2, [0, y], color=colours[row["model"]], linewidth=1)
        ax.plot(row["average_rank"], 0, "o", color=colours[row["model"]], markersize=7, zorder=3)
        ax.annotate(
            f"{_name(names, row['model'])} ({row['average_rank']:.2f})",
            (row["average_rank"], y),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=9,
            color=colours[row["model"]],
        )
    if np.isfinite(cd):
        ax.plot([1, 1 + cd], [0.75, 0.75], color="black", linewidth=2)
        ax.annotate(
            f"CD = {cd:.2f} (Nemenyi, α = {f['alpha']:g})",
            (1 + cd, 0.75),
            xytext=(6, -3),
            textcoords="offset points",
            fontsize=9,
        )
        for n, (a, b) in enumerate(_cliques(r["average_rank"], cd)):
            ax.plot(
                [r.at[a, "average_rank"] - 0.03, r.at[b, "average_rank"] + 0.03],
                [0.4 - 0.12 * n] * 2,
                color="#444444",
                linewidth=4,
                alpha=0.6,
            )
    ax.axis("off")
    return save(fig, path)


def accuracy_vs_cost(
    answer: pd.DataFrame,
    model_costs: pd.DataFrame,
    path: Path,
    colours: dict[str, str] | None = None,
    names: dict[str, str] | None = None,
) -> Path | None:
    """Test accuracy at the largest size (with its CI) against what a model costs to run: CPU
    latency (batch 1, one thread, p50), MACs per image, and parameters; one panel per cost that
    was measured, each on a log axis with every point's value written beside it (a log axis
    spanning less than a decade is easily misread). Upper left is best. None when no cost is known."""
    colours = _colours(answer["model"], colours)
    markers = model_markers(list(colours))
    data = answer[["model", "acc_largest", "acc_largest_ci_low", "acc_largest_ci_high"]].merge(
        model_costs, on="model", how="left"
    )
    panels = [
        (col, label)
        for col, label in (
            ("latency_p50_ms_1t", "CPU latency, batch 1, 1 thread, p50 (ms, log scale)"),
            ("macs", "MACs per image (log scale)"),
            ("n_params", "parameters (log scale)"),
        )
        if pd.to_numeric(data[col], errors="coerce").notna().any()
    ]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), sharey=True, squeeze=False)
    for ax, (col, label) in zip(axes[0], panels):
        for _, r in data.iterrows():
            x = pd.to_numeric(pd.Series([r[col]]), errors="coerce").iloc[0]
            if pd.isna(x) or pd.isna(r["acc_largest"]):
                continue
            err = [
                [r["acc_largest"] - max(r["acc_largest_ci_low"], 0.0)],
                [min(r["acc_largest_ci_high"], 1.0) - r["acc_largest"]],
            ]
            ax.errorbar(
                [float(x)],
                [r["acc_largest"]],
                yerr=err,
                fmt=markers[r["model"]],
                color=colours[r["model"]],
                capsize=3,
                label=_name(names, r["model"]),
                markersize=7,
            )
            value = f"{float(x):.2f} ms" if col.startswith("latency") else _compact(float(x))
            ax.annotate(value, (float(x), r["acc_largest"]), xytext=(5, 4), textcoords="offset points", fontsize=7)
        _log_axis(ax, subs=(1.0, 2.0, 3.0, 5.0))
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy, largest size")
    handles = {}
    for ax in axes[0]:  # a model missing from one panel (cost not measured) is still in the legend
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = sorted(handles)
    fig.legend([handles[k] for k in labels], labels, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 0.9))
    return save(fig, path)
