"""One function per figure; each takes DataFrames and writes a PNG. Agg backend, a
colour-blind-safe palette, the same colour for a model in every figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# Okabe & Ito's palette: distinguishable with every common form of colour blindness.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def model_colours(models: list[str]) -> dict[str, str]:
    """A fixed colour per model, by sorted name, so every figure agrees."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted(models))}


def save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG with no timestamp or version metadata, so reruns give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def learning_curves(summary: pd.DataFrame, path: Path, colours: dict[str, str] | None = None) -> Path:
    """Mean test accuracy against training-set size (log axis), with the confidence band over
    seeds, one line per model. ``summary`` is ``analysis.curves.summarize``'s output."""
    colours = colours or model_colours(summary["model"].unique().tolist())
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for model, group in summary.groupby("model", sort=True):
        group = group.sort_values("n_train")
        c = colours[model]
        ax.plot(group["n_train"], group["mean"], marker="o", color=c, label=model)
        ax.fill_between(group["n_train"], group["ci_low"], group["ci_high"], color=c, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Learning curves (mean, 95% CI over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(frameon=False)
    return save(fig, path)
