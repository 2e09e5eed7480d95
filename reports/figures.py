"""One function per figure; each takes DataFrames and writes a PNG. Agg backend, a
colour-blind-safe palette, the same colour for a model in every figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

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


def save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG with no timestamp or version metadata, so reruns give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def _colours(models, colours: dict[str, str] | None) -> dict[str, str]:
    return colours or model_colours(list(models))


def _compact(v: float, _pos=None) -> str:
    """Tick label of a count: 500, 2k, 1.5M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def _log_axis(ax, axis: str = "x") -> None:
    """Log scale with ticks at 1, 2 and 5 times powers of ten, labelled as plain counts (the
    default 3×10^2 labels crowd each other on ranges shorter than a decade)."""
    getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(ticker.FuncFormatter(_compact))
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
) -> Path:
    """Mean test accuracy against training-set size (log axis) with its 95% CI over seeds (error
    bars), one colour per model; the fitted curve (``analysis.curves.curve_bands``) solid over
    the measured sizes and dashed beyond them, with its 95% interval (seed noise, lack of fit,
    extrapolation); target accuracies as dotted lines. A model without a fit has its means joined by a thin line."""
    colours = _colours(summary["model"].unique(), colours)
    markers = model_markers(list(colours))
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
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
            label=model,
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
        for i, t in enumerate(targets.itertuples()):  # labels alternate sides: close targets stay legible
            ax.axhline(t.target, **TARGET_STYLE, zorder=0)
            ax.annotate(
                f"target {100 * t.target:.1f}%",
                (0.0 if i % 2 else 1.0, t.target),
                xycoords=("axes fraction", "data"),
                ha="left" if i % 2 else "right",
                va="bottom",
                fontsize=8,
                color=TARGET_STYLE["color"],
                zorder=5,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
            )  # legible over a curve
    shown = [summary["ci_low"].min(), summary["ci_high"].max(), summary["mean"].min(), summary["mean"].max()]
    if targets is not None and len(targets):
        shown += [targets["target"].min(), targets["target"].max()]
    if fitted:
        shown += [bands["fit"].min(), bands["fit"].max(), bands["ci_high"].max()]
    _accuracy_axis(ax, float(np.nanmin(shown)), float(np.nanmax(shown)))
    _log_axis(ax)
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Learning curves: mean and 95% CI over seeds; fit (dashed beyond the data)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(frameon=False, loc="lower right")
    return save(fig, path)


def data_needed(needed: pd.DataFrame, targets: pd.DataFrame, path: Path, colours: dict[str, str] | None = None) -> Path:
    """Images needed to reach each target (``analysis.efficiency.data_needed``), per model,
    with their 95% intervals; log axis. Estimates beyond the largest measured size are
    hollow; unreached targets are written out instead of drawn."""
    colours = _colours(needed["model"].unique(), colours)
    models = sorted(needed["model"].unique())
    tlist = list(targets["target"])
    fig, ax = plt.subplots(figsize=(7.0, 0.5 + 0.45 * len(models) * len(tlist) + 0.6))
    y, labels = 0, []
    finite = needed["n_star"][np.isfinite(needed["n_star"].astype(float))]
    right = float(max(finite.max() if len(finite) else 1, needed["n_max_measured"].max()))
    for ti, target in enumerate(tlist):
        for model in models:
            r = needed[(needed["model"] == model) & (needed["target"] == target)]
            labels.append(f"{model} @ {100 * target:.1f}%")
            if len(r):
                r = r.iloc[0]
                n, lo, hi = float(r["n_star"]), float(r["ci_low"]), float(r["ci_high"])
                if np.isfinite(n):
                    # NaN bounds: no interval (too few seeds), so no bar; an infinite high bound runs off the axis
                    hi_drawn = hi if np.isfinite(hi) else right * 3
                    xerr = None if np.isnan(lo) or np.isnan(hi) else [[max(n - lo, 0.0)], [max(hi_drawn - n, 0.0)]]
                    ax.errorbar(
                        [n],
                        [y],
                        xerr=xerr,
                        fmt="o",
                        color=colours[model],
                        capsize=3,
                        markerfacecolor="white" if r["extrapolated"] else colours[model],
                    )
                    if np.isinf(hi):
                        ax.annotate("→ ∞", (hi_drawn, y), fontsize=8, va="center", color=colours[model])
                else:
                    ax.annotate(
                        f"{r['status']}",
                        (0.02, y),
                        xycoords=("axes fraction", "data"),
                        va="center",
                        fontsize=8,
                        color=colours[model],
                    )
            y += 1
        if ti < len(tlist) - 1:
            ax.axhline(y - 0.5, color="#cccccc", linewidth=0.8)
    ax.axvline(needed["n_max_measured"].max(), **TARGET_STYLE)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    _log_axis(ax)
    ax.set_xlabel("training images needed (log scale; dotted: largest measured size; hollow: extrapolated)")
    ax.set_title("Images needed to reach each target (95% CI)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
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
    ranks: pd.DataFrame, friedman: pd.DataFrame, path: Path, colours: dict[str, str] | None = None
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
            f"{row['model']} ({row['average_rank']:.2f})",
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
    p = f["p_value"]
    subtitle = f"Friedman p = {p:.3g}" if np.isfinite(p) else "no Friedman test (needs 3+ models)"
    ax.set_title(f"Average rank over {int(f['n_blocks'])} seeds (ranks averaged over sizes); {subtitle}", fontsize=10)
    ax.axis("off")
    return save(fig, path)


def accuracy_vs_cost(
    answer: pd.DataFrame, model_costs: pd.DataFrame, path: Path, colours: dict[str, str] | None = None
) -> Path | None:
    """Test accuracy at the largest size (with its CI) against what a model costs to run: CPU
    latency (batch 1, one thread, p50), MACs per image, and parameters; one panel per cost that
    was measured. Upper left is best. None when no cost is known."""
    colours = _colours(answer["model"], colours)
    markers = model_markers(list(colours))
    data = answer[["model", "acc_largest", "acc_largest_ci_low", "acc_largest_ci_high"]].merge(
        model_costs, on="model", how="left"
    )
    panels = [
        (col, label)
        for col, label in (
            ("latency_p50_ms_1t", "CPU latency, batch 1, 1 thread (ms, p50)"),
            ("macs", "MACs per image"),
            ("n_params", "parameters"),
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
                label=r["model"],
                markersize=7,
            )
        _log_axis(ax)
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy, largest size")
    handles = {}
    for ax in axes[0]:  # a model missing from one panel (cost not measured) is still in the legend
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = sorted(handles)
    fig.legend([handles[k] for k in labels], labels, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 0.9))
    fig.suptitle("Accuracy against cost (upper left is best)", fontsize=11, y=1.03)
    return save(fig, path)


def tuning_history(trials: pd.DataFrame, path: Path, colours: dict[str, str] | None = None) -> Path | None:
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
            ax.plot(t.loc[complete, "trial"], t.loc[complete, "value"], "o", color=c, markersize=4, label=model)
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
    fig.suptitle("Tuning history (filled: complete, hollow: pruned; line: best so far)", fontsize=11, y=1.03)
    return save(fig, path)


def training_curves(epochs: pd.DataFrame, runs: pd.DataFrame, model: str, path: Path, colour: str) -> Path | None:
    """Training (solid) and validation (dashed) loss and accuracy per epoch for every finished
    run of ``model``: one column per size, one line per seed. None when no epoch is stored."""
    runs = runs[runs["model"] == model]
    e = epochs.merge(runs[["run_id", "n_train", "seed"]], on="run_id")
    if e.empty:
        return None
    sizes = sorted(e["n_train"].unique())
    fig, axes = plt.subplots(2, len(sizes), figsize=(max(3.0 * len(sizes), 5), 4.6), sharex="col", squeeze=False)
    for j, n in enumerate(sizes):
        for seed, s in e[e["n_train"] == n].groupby("seed", sort=True):
            s = s.sort_values("epoch")
            shade = 0.35 + 0.65 * (1 - (int(seed) % 5) / 5)
            for i, (train, val) in enumerate((("train_loss", "val_loss"), ("train_acc", "val_acc"))):
                axes[i][j].plot(
                    s["epoch"],
                    s[train],
                    color=colour,
                    alpha=shade,
                    linewidth=1.3,
                    label="train" if seed == s["seed"].min() else None,
                )
                axes[i][j].plot(s["epoch"], s[val], color=colour, alpha=shade, linewidth=1.3, linestyle="--")
        axes[0][j].set_title(f"{n:,} images", fontsize=9)
        axes[1][j].set_xlabel("epoch")
        for i in range(2):
            axes[i][j].grid(True, alpha=0.3)
            axes[i][j].xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axes[0][0].set_ylabel("loss")
    axes[1][0].set_ylabel("accuracy")
    fig.suptitle(f"{model}: training (solid) and validation (dashed), one line per seed", fontsize=10, y=1.02)
    return save(fig, path)


def confusion_matrix(confusion: pd.DataFrame, model: str, path: Path) -> Path | None:
    """Row-normalised test confusion matrix of ``model`` (``analysis.confusion``), summed over
    its full-data runs, with class names; cells annotated where there are few classes."""
    c = confusion[confusion["model"] == model]
    if c.empty:
        return None
    k = int(c["true"].max()) + 1
    share = np.zeros((k, k))
    share[c["true"].to_numpy(), c["predicted"].to_numpy()] = c["share"].to_numpy()
    names = c.sort_values("true").drop_duplicates("true")["true_name"].tolist()
    size = min(max(3.2, 0.45 * k + 1.5), 12)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    step = max(1, int(np.ceil(k / 40)))  # at most ~40 labelled ticks: more are unreadable
    ax.set_xticks(
        range(0, k, step),
        [str(n) for n in names[::step]],
        rotation=90 if max(map(len, map(str, names))) > 3 else 0,
        fontsize=8,
    )
    ax.set_yticks(range(0, k, step), [str(n) for n in names[::step]], fontsize=8)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                if share[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{share[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    n_runs, n_train = int(c["n_runs"].iloc[0]), int(c["n_train"].iloc[0])
    ax.set_title(f"{model}: {n_train:,} images, {n_runs} run(s); share of each true class", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save(fig, path)
