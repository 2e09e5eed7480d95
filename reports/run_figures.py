"""The figures of how runs and tuning went (not the answers): tuning history, training curves,
confusion matrices, and the budget control's convergence. One function per figure, the look of
``figure_style.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reports.figure_style import (
    TARGET_STYLE,
    _colours,
    _key,
    _name,
    plt,
    save,
    ticker,
)


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
    run of ``model``: one column per size, one line per seed, with the epoch each run kept (best
    validation accuracy, or the last under the plateau budget) marked by a dot on its validation
    accuracy. Axes are shared
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
    level: float = 0.95,
) -> Path | None:
    """Convergence per model and size (``analysis.convergence``). Top: each run's final-epoch
    validation gain (its last epoch's validation accuracy minus the best of its earlier ones,
    ``run_convergence``'s ``late_gain``), filled ▲ when above ``rise_tolerance`` (still rising),
    hollow ○ otherwise, with that tolerance dotted. Bottom, only where the budget control ran:
    the control's test-accuracy gain over the same seed's run, a line down to its one-sided lower
    bound at ``level`` where known (◆ filled: that bound above the cell's threshold, not converged;
    ◇ hollow: not), and the threshold as a bar. Sizes are
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
            if np.isfinite(r.control_bound):
                bottom.plot([x, x], [100 * r.control_bound, 100 * r.control_gain], color=c, linewidth=1.2, zorder=3)
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
            _key("2× budget: not converged", "D"),
            _key("2× budget: converged", "D", hollow=True),
            plt.Line2D([], [], color="#666666", linewidth=1.2, label=f"gain's {100 * level:.0f}% lower bound"),
            plt.Line2D([], [], color="#333333", linewidth=2, label="cell's threshold"),
        ]
    fig.legend(handles=handles, frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    return save(fig, path)
