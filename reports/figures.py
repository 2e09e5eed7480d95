"""One function per figure; each takes DataFrames and writes it as PNG, PDF and SVG (``FORMATS``).
Agg backend, a colour-blind-safe palette, the same colour for a model in every figure, display
names (``names``: timm id -> name) as labels, no titles: the report's captions say what a
figure shows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

FORMATS = ("png", "pdf", "svg")
X_RANGE = 1.5  # curves are drawn to at most this multiple of the largest measured size
matplotlib.rcParams["svg.hashsalt"] = "study"  # SVG element ids from a fixed salt: reruns give the same file
matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text as text: smaller, faster, editable
matplotlib.rcParams["pdf.fonttype"] = 42  # TrueType in PDFs: text stays text for journals' checks

# Okabe & Ito's palette: distinguishable with every common form of colour blindness.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]  # a second cue besides colour
TARGET_STYLE = {"color": "#555555", "linestyle": ":", "linewidth": 1}


def model_colours(models: list[str]) -> dict[str, str]:
    """A fixed colour per model, by sorted name, so every figure agrees."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted(models))}


def model_markers(models: list[str]) -> dict[str, str]:
    """A fixed marker per model, by sorted name (colour is not the only cue)."""
    return {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(sorted(models))}


_METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}
_METADATA["svg"] = {"Creator": None, "Date": None}


def save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as PNG (the path given, 110 dpi: for the page; a paper takes the vector
    files), PDF and SVG beside it, with no timestamp or version metadata, so reruns give the
    same bytes. Returns the PNG's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for fmt in FORMATS:
        fig.savefig(path.with_suffix(f".{fmt}"), dpi=110, bbox_inches="tight", metadata=_METADATA[fmt])
    plt.close(fig)
    return path.with_suffix(".png")


def _name(names: dict[str, str] | None, model: str) -> str:
    return (names or {}).get(model, model)


def _colours(models, colours: dict[str, str] | None) -> dict[str, str]:
    return colours or model_colours(list(models))


def _compact(v: float, _pos=None) -> str:
    """Tick label of a count: 500, 2k, 1.5M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def _log_axis(ax, axis: str = "x", subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """Log scale with labelled ticks at ``subs`` times powers of ten (plain counts: the default
    3×10^2 labels crowd each other on short ranges) and unlabelled minor ticks at every other
    integer multiple, so the spacing shows the scale is logarithmic."""
    getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    target.set_major_formatter(ticker.FuncFormatter(_compact))
    target.set_minor_locator(ticker.LogLocator(base=10, subs=tuple(range(1, 10)), numticks=100))
    target.set_minor_formatter(ticker.NullFormatter())


def _accuracy_axis(ax, low: float, high: float) -> None:
    """Accuracy lies in [0, 1]: never show a confidence interval running past it."""
    ax.set_ylim(max(0.0, low - 0.03), min(1.0, high + 0.03) + 0.01)


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
    measured size, with its 95% interval (seed noise, lack of fit, extrapolation); target accuracies
    as dotted lines labelled outside
    the axes, where they hide no data. A model without a fit has its means joined by a thin line."""
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


def tuning_history(
    trials: pd.DataFrame, path: Path, colours: dict[str, str] | None = None, names: dict[str, str] | None = None
) -> Path | None:
    """Optimisation history of every tuned (model, size): each trial's validation accuracy
    (complete: filled, pruned: hollow) and the best so far as a step line; one panel per size.
    None when no trial has a value."""
    trials = trials[pd.to_numeric(trials["value"], errors="coerce").notna()]
    if trials.empty:
        return None
    colours = _colours(trials["model"].unique(), colours)
    sizes = sorted(trials[["size_kind", "size_value"]].drop_duplicates().itertuples(index=False, name=None))
    cols = min(len(sizes), 3)
    rows = int(np.ceil(len(sizes) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.0 * rows), sharey=True, squeeze=False)
    for ax, (kind, value) in zip(axes.ravel(), sizes):
        cell = trials[(trials["size_kind"] == kind) & (trials["size_value"] == value)]
        for model, t in cell.groupby("model", sort=True):
            t = t.sort_values("trial")
            c = colours[model]
            complete = t["state"] == "COMPLETE"
            ax.plot(
                t.loc[complete, "trial"],
                t.loc[complete, "value"],
                "o",
                color=c,
                markersize=4,
                label=_name(names, model),
            )
            ax.plot(
                t.loc[~complete, "trial"],
                t.loc[~complete, "value"],
                "o",
                color=c,
                markersize=4,
                markerfacecolor="white",
            )
            best = t["value"].where(complete).cummax().ffill()  # pruned trials keep the best so far
            ax.step(t["trial"], best, where="post", color=c, linewidth=1.5)
        ax.set_title(f"{kind} = {value:g}", fontsize=10)
        ax.set_xlabel("trial")
        ax.grid(True, alpha=0.3)
    for ax in axes.ravel()[len(sizes) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("validation accuracy")
    axes[0][0].legend(frameon=False, fontsize=8)
    return save(fig, path)


def training_curves(
    epochs: pd.DataFrame,
    runs: pd.DataFrame,
    model: str,
    path: Path,
    colour: str,
    sizes: list[int] | None = None,
    loss_max: float | None = None,
) -> Path | None:
    """Training (solid) and validation (dashed) loss and accuracy per epoch for every finished
    run of ``model``: one column per size, one line per seed, with the epoch each run selected
    (best validation accuracy) marked by a dot on its validation accuracy. Axes are shared
    across columns, and across models when the caller passes the same ``sizes`` (the columns)
    and ``loss_max`` (the top of the loss axis). None when no epoch is stored."""
    runs = runs[runs["model"] == model]
    e = epochs.merge(runs[["run_id", "n_train", "seed", "best_epoch"]], on="run_id")
    if e.empty:
        return None
    sizes = sizes or sorted(e["n_train"].unique())
    fig, axes = plt.subplots(
        2, len(sizes), figsize=(max(2.6 * len(sizes), 5), 4.4), sharex=True, sharey="row", squeeze=False
    )
    for j, n in enumerate(sizes):
        for seed, s in e[e["n_train"] == n].groupby("seed", sort=True):
            s = s.sort_values("epoch")
            shade = 0.35 + 0.65 * (1 - (int(seed) % 5) / 5)
            for i, (train, val) in enumerate((("train_loss", "val_loss"), ("train_acc", "val_acc"))):
                axes[i][j].plot(s["epoch"], s[train], color=colour, alpha=shade, linewidth=1.3)
                axes[i][j].plot(s["epoch"], s[val], color=colour, alpha=shade, linewidth=1.3, linestyle="--")
            best = s[s["epoch"] == s["best_epoch"]]
            axes[1][j].plot(best["epoch"], best["val_acc"], "o", color=colour, markersize=4, zorder=3)
        axes[0][j].set_title(f"{n:,} images", fontsize=9)
        axes[1][j].set_xlabel("epoch")
        for i in range(2):
            axes[i][j].grid(True, alpha=0.3)
            axes[i][j].xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axes[0][0].set_ylabel("loss")
    axes[1][0].set_ylabel("accuracy")
    axes[1][0].set_ylim(0, 1.02)
    axes[1][0].yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
    if loss_max:
        axes[0][0].set_ylim(0, loss_max)
    handles = [
        plt.Line2D([], [], color=colour, label="training"),
        plt.Line2D([], [], color=colour, linestyle="--", label="validation"),
        plt.Line2D([], [], color=colour, marker="o", linestyle="none", label="selected epoch"),
    ]
    fig.legend(handles=handles, frameon=False, fontsize=8, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.06))
    return save(fig, path)


def confusion_matrix(confusions: list[pd.DataFrame], model: str, path: Path, names: dict[str, str] | None = None):
    """Row-normalised test confusion matrices of ``model`` (``analysis.confusion``), one panel
    per size given (the smallest and the largest), summed over that size's runs. The colour
    scale is logarithmic from 0.5% to 100%, so errors of 1-8% stand out against the diagonal;
    cells of 0.5% or more carry their percentage where there are few classes."""
    from matplotlib.colors import LogNorm

    panels = [c[c["model"] == model] for c in confusions]
    panels = [c for c in panels if not c.empty]
    if not panels:
        return None
    k = int(panels[0]["true"].max()) + 1
    names_k = panels[0].sort_values("true").drop_duplicates("true")["true_name"].tolist()
    size = min(max(3.0, 0.4 * k + 1.3), 10)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels) + 1, size), squeeze=False)
    norm = LogNorm(vmin=0.005, vmax=1.0)
    step = max(1, int(np.ceil(k / 40)))  # at most ~40 labelled ticks: more are unreadable
    im = None
    for ax, c in zip(axes[0], panels):
        share = np.zeros((k, k))
        share[c["true"].to_numpy(), c["predicted"].to_numpy()] = c["share"].to_numpy()
        im = ax.imshow(np.where(share > 0, np.maximum(share, 0.005), np.nan), cmap="Blues", norm=norm)
        ticks = [str(n) for n in names_k[::step]]
        ax.set_xticks(range(0, k, step), ticks, rotation=90 if max(map(len, ticks)) > 3 else 0, fontsize=8)
        ax.set_yticks(range(0, k, step), ticks, fontsize=8)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if share[i, j] >= 0.005:
                        ax.text(
                            j,
                            i,
                            f"{100 * share[i, j]:.0f}",
                            ha="center",
                            va="center",
                            fontsize=6.5,
                            color="white" if share[i, j] > 0.3 else "black",
                        )
        ax.set_xlabel("predicted class")
        ax.set_title(f"{int(c['n_train'].iloc[0]):,} images, {int(c['n_runs'].iloc[0])} run(s)", fontsize=9)
    axes[0][0].set_ylabel("true class")
    bar = fig.colorbar(im, ax=list(axes[0]), fraction=0.046 / len(panels), pad=0.04)
    bar.set_label("share of the true class (log scale)")
    bar.ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=1))
    return save(fig, path)


def convergence(
    runs: pd.DataFrame,
    cells: pd.DataFrame,
    path: Path,
    rise_tolerance: float,
    colours: dict[str, str] | None = None,
    names: dict[str, str] | None = None,
) -> Path | None:
    """Convergence per model and size (``analysis.convergence``). Top: each run's final-epoch
    validation gain (its last epoch's validation accuracy minus the best of its earlier ones,
    ``run_convergence``'s ``late_gain``), filled ▲ when above ``rise_tolerance`` (still rising),
    hollow ○ otherwise, with that tolerance dotted. Bottom, only where the budget control ran:
    the control's test-accuracy gain over the same seed's run (◆ filled: above the cell's
    threshold, not converged; ◇ hollow: within it) and the threshold as a bar. Sizes are
    categories, models side by side within each. None when no run has an epoch history."""
    runs = runs.dropna(subset=["late_gain"])
    if runs.empty:
        return None
    models = sorted(runs["model"].unique())
    colours = _colours(models, colours)
    sizes = sorted(int(n) for n in runs["n_train"].unique())
    controlled = cells.dropna(subset=["control_gain"]) if len(cells) else cells
    panels = 2 if len(controlled) else 1
    fig, axes = plt.subplots(panels, 1, figsize=(min(9.0, 1.5 * len(sizes) + 1.0), 2.6 * panels + 0.6), sharex=True)
    axes = np.atleast_1d(axes)
    width = 0.8 / len(models)
    seeds = sorted(runs["seed"].unique())

    def x_of(model: str, n: int, seed=None) -> float:
        """Sizes are categories, models side by side within one, seeds spread a little within a model."""
        spread = 0 if seed is None else (seeds.index(seed) - (len(seeds) - 1) / 2) * width * 0.6 / max(len(seeds), 1)
        return sizes.index(n) - 0.4 + width * (models.index(model) + 0.5) + spread

    top = axes[0]
    for r in runs.itertuples():
        c = colours[r.model]
        top.plot(
            x_of(r.model, int(r.n_train), r.seed),
            100 * r.late_gain,
            "^" if r.rising else "o",
            color=c,
            markerfacecolor=c if r.rising else "white",
            markersize=6,
            alpha=0.9,
        )
    top.axhline(100 * rise_tolerance, **TARGET_STYLE)
    top.axhline(0, color="#999999", linewidth=0.6)
    top.set_ylabel("final-epoch validation gain (pp)", fontsize=9)
    if panels == 2:
        bottom = axes[1]
        for r in controlled.itertuples():
            if int(r.n_train) not in sizes:
                continue
            x, c = x_of(r.model, int(r.n_train)), colours[r.model]
            bottom.plot(
                [x - width * 0.4, x + width * 0.4], [100 * r.threshold] * 2, color="#333333", linewidth=2, zorder=2
            )
            bottom.plot(
                x,
                100 * r.control_gain,
                "D",
                color=c,
                markerfacecolor="white" if r.converged else c,
                markersize=7,
                zorder=3,
            )
        bottom.axhline(0, color="#999999", linewidth=0.6)
        bottom.set_ylabel("test gain, 2× budget (pp)", fontsize=9)
    for ax in axes:
        ax.grid(True, axis="y", alpha=0.3)
        for i in range(1, len(sizes)):
            ax.axvline(i - 0.5, color="#dddddd", linewidth=0.8)
    axes[-1].set_xticks(range(len(sizes)), [f"{n:,}" for n in sizes])
    axes[-1].set_xlim(-0.5, len(sizes) - 0.5)
    axes[-1].set_xlabel("training images")
    handles = [_key(_name(names, m), "s", color=colours[m]) for m in models]
    handles += [
        _key("run still rising", "^"),
        _key("run not rising", "o", hollow=True),
        plt.Line2D([], [], **TARGET_STYLE, label=f"{100 * rise_tolerance:g} pp tolerance"),
    ]
    if panels == 2:
        handles += [
            _key("2× budget: above threshold", "D"),
            _key("2× budget: within threshold", "D", hollow=True),
            plt.Line2D([], [], color="#333333", linewidth=2, label="cell's threshold"),
        ]
    fig.legend(handles=handles, frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    return save(fig, path)


def _key(label: str, marker: str, hollow: bool = False, color: str = "#444444") -> plt.Line2D:
    """A legend entry for a marker (no line), filled or hollow."""
    face = "white" if hollow else color
    return plt.Line2D([], [], marker=marker, color=color, markerfacecolor=face, linestyle="none", label=label)
