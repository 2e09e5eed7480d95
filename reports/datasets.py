"""The report of a study of several datasets: one full report per dataset (in
``<out>/datasets/<dataset>/report/``) and, in ``<out>/report/``, the comparison across them
(``analysis.datasets``): what each dataset says, average ranks per size and overall, the
Friedman test with datasets as blocks, a critical-difference diagram, and images needed
normalised so datasets can be read together.
"""

from __future__ import annotations

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.datasets import DatasetComparison, compare_datasets  # noqa: E402
from analysis.load import StudyData  # noqa: E402
from analysis.study_analysis import analyse  # noqa: E402
from reports.build import _env, _records, write_report  # noqa: E402


def dataset_label(data: StudyData) -> str:
    """A dataset's name in the study: its study's name after ``<group>/``."""
    group = data.config.get("group", "")
    return data.name[len(group) + 1 :] if group and data.name.startswith(group + "/") else data.name


def write_datasets_report(
    name: str, datas: list[StudyData], out_dir: str | Path, targets: list[float] | None = None
) -> Path:
    """Write every dataset's report and the cross-dataset one; returns the latter's folder."""
    out_dir = Path(out_dir)
    analyses = {}
    for data in datas:
        label = dataset_label(data)
        analyses[label] = analyse(data, targets=targets)
        write_report(data, out_dir / "datasets" / label, targets=targets, analysis=analyses[label])
    comparison = compare_datasets(analyses)
    folder = out_dir / "report"
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    for table_name, table in comparison.tables().items():
        table.to_csv(folder / f"{table_name}.csv", index=False)
    figure = critical_difference_diagram(comparison, folder / "figures" / "critical_difference.png")
    context = _context(name, comparison)
    env = _env()
    md = env.get_template("datasets.md.j2").render(
        **context, figure="figures/critical_difference.png" if figure else ""
    )
    inline = "data:image/png;base64," + base64.b64encode(figure.read_bytes()).decode() if figure else ""
    html = env.get_template("datasets.html.j2").render(**context, figure=inline)
    (folder / "report.md").write_text(md, encoding="utf-8")
    (folder / "index.html").write_text(html, encoding="utf-8")
    return folder


def _context(name: str, c: DatasetComparison) -> dict:
    sections = []
    for label, a in c.datasets.items():
        done = a.data.done
        best = a.scores.dropna(subset=["score"]).sort_values(["score", "model"], ascending=[False, True])
        sections.append(
            {
                "label": label,
                "dataset": a.data.dataset.get("name", ""),
                "n_pool": a.data.splits.get("n_pool"),
                "n_test": a.data.splits.get("n_test"),
                "classes": len(a.data.class_names),
                "runs_done": len(done),
                "runs": len(a.data.runs),
                "answer": _records(a.answer),
                "best": best.iloc[0]["model"] if len(best) else None,
                "link": f"../datasets/{label}/report/index.html",
                "md_link": f"../datasets/{label}/report/report.md",
            }
        )
    ranks = c.overall.ranks
    friedman = c.overall.friedman.iloc[0].to_dict() if len(c.overall.friedman) else {}
    sizes = [
        {"kind": kind, "value": value, "rows": _records(g.sort_values(["average_rank", "model"]))}
        for (kind, value), g in c.size_ranks.groupby(["size_kind", "size_value"], sort=True)
    ]
    return {
        "name": name,
        "sections": sections,
        "overall": _records(ranks),
        # Every arm that shares the best average rank: a tie names them all.
        "best_overall": list(ranks[np.isclose(ranks["average_rank"], ranks["average_rank"].min())]["model"]),
        "friedman": friedman,
        "posthoc": _records(c.overall.posthoc),
        "sizes": sizes,
        "scores": _records(c.scores),
        "normalised": _records(c.normalised.sort_values(["target_label", "dataset", "n_star"])),
        "n_datasets": len(c.datasets),
    }


def critical_difference_diagram(c: DatasetComparison, path: Path) -> Path | None:
    """Demšar's critical-difference diagram of the arms' average ranks over datasets: arms joined
    by a bar do not differ by the Nemenyi critical difference (CD, drawn at the top). None when
    there are fewer than two arms ranked."""
    ranks = c.overall.ranks.sort_values("average_rank")
    if len(ranks) < 2 or not len(c.overall.friedman):
        return None
    k = len(ranks)
    cd = float(c.overall.friedman.iloc[0]["critical_difference"])
    names, values = list(ranks["model"]), ranks["average_rank"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(7, 1.6 + 0.3 * k))
    right = max(k, 1 + cd if np.isfinite(cd) else k)
    ax.set_xlim(right + 0.3, 0.7)  # rank 1 (best) on the right, as Demšar draws it
    ax.set_ylim(-(k // 2 + 2) * 0.4, 1.2)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black")
    for r in range(1, k + 1):
        ax.vlines(r, 0, 0.12, color="black")
        ax.text(r, 0.2, str(r), ha="center", va="bottom", fontsize=9)
    if np.isfinite(cd):
        ax.hlines(0.85, 1, 1 + cd, color="black", linewidth=2)
        ax.text(1 + cd / 2, 0.9, f"CD = {cd:.2f} (Nemenyi, α = 0.05)", ha="center", va="bottom", fontsize=8)
    for i, (label, r) in enumerate(zip(names, values, strict=True)):
        left = i >= k / 2  # the better half is labelled on the right
        y = -(min(i, k - 1 - i) + 1) * 0.4
        x_text = k + 0.2 if left else 0.8
        ax.vlines(r, y, 0, color="grey", linewidth=0.8)
        ax.hlines(y, r, x_text, color="grey", linewidth=0.8)
        ax.text(x_text, y, f" {label} ({r:.2f}) ", ha="right" if left else "left", va="center", fontsize=9)
    cliques, line = [], 0
    for i in range(k):  # maximal runs of arms within CD of each other
        j = max(m for m in range(i, k) if values[m] - values[i] < cd) if np.isfinite(cd) else i
        if j > i and not any(a <= i and j <= b for a, b in cliques):
            cliques.append((i, j))
    for i, j in cliques:
        line += 1
        ax.hlines(-0.1 - 0.1 * line, values[i] - 0.03, values[j] + 0.03, color="black", linewidth=3)
    ax.set_title(f"Average ranks over {len(c.datasets)} datasets (data-efficiency score)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
