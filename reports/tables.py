"""The report's main tables, shaped for a paper: one model x size accuracy table, the pairwise
differences with the better model first, the costs with units, the convergence check. Each is a
DataFrame of display strings with the unit in its header, written beside the report as CSV and
as a LaTeX ``tabular`` with booktabs rules (``to_latex``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.convergence import LEVEL
from analysis.stats import equivalent
from analysis.study_analysis import StudyAnalysis
from reports.arms import unit
from reports.format import count, is_missing, pvalue

LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "−": "$-$",
    "×": r"$\times$",
    "±": r"$\pm$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "—": "---",
    "–": "--",
}


def _pct(v) -> str:
    """The report's one accuracy format in tables: percent with one decimal, no sign."""
    return "—" if is_missing(v) else f"{100 * float(v):.1f}"


def _ci(lo, hi) -> str:
    return "—" if is_missing(lo) or is_missing(hi) else f"[{_pct(lo)}, {_pct(hi)}]"


def _pp(v) -> str:
    return "—" if is_missing(v) else f"{100 * float(v):+.1f}"


def _ms(v) -> str:
    return "—" if is_missing(v) else f"{float(v):.2f}"


def accuracy_table(a: StudyAnalysis, names: dict[str, str]) -> pd.DataFrame:
    """Rows: models (arms where the study has them, the first column named so); per size two
    columns: test accuracy mean [95% CI] and macro-F1 mean, both in percent over the seeds. The
    interval is the population one (seeds and test-set sampling, ``analysis.population``) where
    the analysis has it, else over seeds on this test set. The row order is sorted by id."""
    s = a.population if a.population is not None and len(a.population) else a.summary
    if s.empty:
        return pd.DataFrame()
    f1 = a.data.done.groupby(["model", "n_train"])["test_f1"].mean()
    sizes = sorted(s["n_train"].unique())
    rows = []
    for model in sorted(s["model"].unique()):
        row = {unit(a).capitalize(): names[model]}
        for n in sizes:
            r = s[(s["model"] == model) & (s["n_train"] == n)]
            key = f"{count(n)} images"
            if r.empty:
                row[f"{key}: accuracy (%) [95% CI]"] = "—"
                row[f"{key}: macro-F1 (%)"] = "—"
                continue
            r = r.iloc[0]
            row[f"{key}: accuracy (%) [95% CI]"] = f"{_pct(r['mean'])} {_ci(r['ci_low'], r['ci_high'])}"
            row[f"{key}: macro-F1 (%)"] = _pct(f1.get((model, n), np.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def oriented_pairs(pairwise: pd.DataFrame) -> pd.DataFrame:
    """A table of pairs (accuracy or score differences) with each pair turned so that model_a
    has the higher mean: differences are then positive and P(A > B) reads as the better model's
    share of seeds."""
    if pairwise.empty:
        return pairwise
    src = pairwise
    flip = src["diff"] < 0
    out = src.copy()
    # each value from the unflipped source, so no swap reads a column it has just written
    for x, y in (("model_a", "model_b"), ("mean_a", "mean_b"), ("mcnemar_b", "mcnemar_c")):
        if x in src:
            out[x], out[y] = src[x].where(~flip, src[y]), src[y].where(~flip, src[x])
    out["diff"] = src["diff"].where(~flip, -src["diff"])
    out["ci_low"] = src["ci_low"].where(~flip, -src["ci_high"])
    out["ci_high"] = src["ci_high"].where(~flip, -src["ci_low"])
    if "p_a_better" in src:
        out["p_a_better"] = src["p_a_better"].where(~flip, 1 - src["p_a_better"])
    return out


def pairs_table(a: StudyAnalysis, names: dict[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """Pairwise differences, better model first, and a note per column left out because it held
    the same value in every row (it says nothing row by row). Significant: 'yes' (paired t-test,
    Holm), 'no (tie)' when the difference's 95% CI lies within the equivalence margin, else 'no'."""
    pw = oriented_pairs(a.comparisons.pairwise)
    if pw.empty:
        return pd.DataFrame(), []
    table = pd.DataFrame(
        {
            "Training images": [count(n) for n in pw["n_train"]],
            "Better (A)": [names[m] for m in pw["model_a"]],
            "Other (B)": [names[m] for m in pw["model_b"]],
            "Seeds": pw["n_pairs"].astype(int).astype(str),
            "A − B (pp)": [_pp(v) for v in pw["diff"]],
            "95% CI (pp)": [
                "—" if is_missing(lo) else f"[{_pp(lo)}, {_pp(hi)}]" for lo, hi in zip(pw["ci_low"], pw["ci_high"])
            ],
            "t-test p, Holm": [pvalue(v) for v in pw["p_t_holm"]],
            "Wilcoxon p, Holm": [pvalue(v) for v in pw["p_wilcoxon_holm"]],
            "McNemar p, Holm": [pvalue(v) for v in pw["p_mcnemar_holm"]],
            "P(A > B)": ["—" if is_missing(v) else f"{float(v):.2f}" for v in pw["p_a_better"]],
            "Significant": [
                "yes" if s else "no (tie)" if equivalent(lo, hi) else "no"
                for s, lo, hi in zip(pw["significant"], pw["ci_low"], pw["ci_high"])
            ],
        }
    )
    return drop_constant(table, keep=["Training images", "Better (A)", "Other (B)", "A − B (pp)", "Significant"])


def drop_constant(table: pd.DataFrame, keep: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """``table`` without the columns (other than ``keep``) whose value is the same in every row,
    and a note for each: 'Seeds = 3'."""
    if len(table) < 2:
        return table, []
    constant = [c for c in table.columns if c not in keep and table[c].nunique(dropna=False) == 1]
    notes = [f"{c} = {table[c].iloc[0]}" for c in constant]
    return table.drop(columns=constant), notes


def costs_table(a: StudyAnalysis, names: dict[str, str]) -> pd.DataFrame:
    """Model costs with units in the headers; latency as p50 / p95 over repeated timings."""
    mc = a.model_costs
    if mc.empty or not mc["measured"].any():
        return pd.DataFrame()
    threads = mc["threads_all"].dropna()
    all_label = f"{int(threads.max())} threads" if len(threads) else "all threads"
    table = pd.DataFrame(
        {
            unit(a).capitalize(): [names[m] for m in mc["model"]],
            "Parameters (M)": ["—" if is_missing(v) else f"{float(v) / 1e6:.2f}" for v in mc["n_params"]],
            "MACs / image (M)": ["—" if is_missing(v) else f"{float(v) / 1e6:.1f}" for v in mc["macs"]],
            "Input (px)": ["—" if is_missing(v) else str(int(v)) for v in mc["input_size"]],
            "Size (MB)": ["—" if is_missing(v) else f"{float(v):.1f}" for v in mc["size_mb"]],
            "Latency, 1 thread, p50 / p95 (ms)": [
                f"{_ms(p50)} / {_ms(p95)}" for p50, p95 in zip(mc["latency_p50_ms_1t"], mc["latency_p95_ms_1t"])
            ],
            f"Latency, {all_label}, p50 / p95 (ms)": [
                f"{_ms(p50)} / {_ms(p95)}" for p50, p95 in zip(mc["latency_p50_ms_all"], mc["latency_p95_ms_all"])
            ],
        }
    )
    return table


def convergence_table(a: StudyAnalysis, names: dict[str, str]) -> pd.DataFrame:
    """Per (model, size): runs whose best epoch was the last, runs still rising, runs capped (plateau
    budget), the budget control's gain and its lower bound against its threshold, and the verdict."""
    c = a.convergence
    if c is None or c.empty:
        return pd.DataFrame()
    table = pd.DataFrame(
        {
            unit(a).capitalize(): [names[m] for m in c["model"]],
            "Training images": [count(n) for n in c["n_train"]],
            "Best epoch = last (runs)": [f"{b} of {r}" for b, r in zip(c["best_is_last"], c["runs"])],
            "Still rising (runs)": [f"{b} of {r}" for b, r in zip(c["rising"], c["runs"])],
            "Capped (runs)": [f"{b} of {r}" for b, r in zip(c["capped"], c["runs"])],
            "Seed std (pp)": ["—" if is_missing(v) else f"{100 * float(v):.1f}" for v in c["seed_std"]],
            "2× steps gain (pp)": [_pp(v) for v in c["control_gain"]],
            f"Its {100 * LEVEL:.0f}% lower bound (pp)": [_pp(v) for v in c["control_bound"]],
            "Threshold (pp)": [f"{100 * float(v):.1f}" for v in c["threshold"]],
            "Converged": ["yes" if v else "no" for v in c["converged"]],
            "Evidence": list(c["evidence"]),
        }
    )
    if c["control_gain"].isna().all():  # no budget control: its columns would be empty
        table = table.drop(columns=["2× steps gain (pp)", "Threshold (pp)"])
    if c["control_bound"].isna().all():  # no control, or one stored before its changed images were
        table = table.drop(columns=[f"Its {100 * LEVEL:.0f}% lower bound (pp)"])
    if not plateau_budget(a):  # a fixed budget has no cap
        table = table.drop(columns=["Capped (runs)"])
    if c["evidence"].nunique() == 1:  # the section's text names the one kind of evidence
        table = table.drop(columns=["Evidence"])
    return table


def latex_escape(text) -> str:
    """``text`` with LaTeX's special characters escaped, so model names like resnet_18 or
    'A & B' compile."""
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def to_latex(table: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs ``table`` environment: first column left, the others right; every cell escaped.
    Needs ``\\usepackage{booktabs}`` in the paper."""
    cols = "l" + "r" * (len(table.columns) - 1)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for row in table.itertuples(index=False):
        lines.append(" & ".join(latex_escape(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def write_tables(tables: dict[str, tuple[pd.DataFrame, str]], folder: Path) -> None:
    """Each non-empty table as ``<name>.csv`` and ``<name>.tex`` (caption given) in ``folder``."""
    for name, (table, caption) in tables.items():
        if table.empty:
            continue
        table.to_csv(folder / f"{name}.csv", index=False)
        (folder / f"{name}.tex").write_text(to_latex(table, caption, f"tab:{name}"), encoding="utf-8")


def plateau_budget(a: StudyAnalysis) -> bool:
    """Whether the study's runs trained under the plateau budget (its stored config)."""
    return ((a.data.config or {}).get("train") or {}).get("budget") == "plateau"
