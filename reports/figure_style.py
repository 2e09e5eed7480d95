"""The look shared by every figure: Agg backend, reproducible files in ``FORMATS``, Okabe & Ito's
colour-blind-safe palette with a marker as a second cue, the same colour for a model in every
figure, display names as labels, compact log axes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402

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
    # The tight box once for all three files: "tight" in savefig lays the figure out again per
    # format, a third of a report's drawing time.
    fig.draw_without_rendering()
    box = fig.get_tightbbox().padded(matplotlib.rcParams["savefig.pad_inches"])
    for fmt in FORMATS:
        fig.savefig(path.with_suffix(f".{fmt}"), dpi=110, bbox_inches=box, metadata=_METADATA[fmt])
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


def _key(label: str, marker: str, hollow: bool = False, color: str = "#444444") -> plt.Line2D:
    """A legend entry for a marker (no line), filled or hollow."""
    face = "white" if hollow else color
    return plt.Line2D([], [], marker=marker, color=color, markerfacecolor=face, linestyle="none", label=label)
