"""The verdict at the top of the report: one headline sentence, at most three bullets with the
key numbers and one caveat line, each claim no stronger than the analysis that backs it.

- Accuracy: the leader at a size is named most accurate only when the report's own test (paired
  t-test over seeds, Holm-adjusted, ``analysis.stats``) separates it from every other model. A
  model it does not separate ties with it only when their paired difference's 95% CI lies
  within ±``EQUIVALENCE_MARGIN`` (1 pp); otherwise the gap is written with its interval, as
  not separated by the Holm-adjusted paired test.
- Images needed: a need censored at the smallest measured size is written as "reaches X at the
  smallest size", and a ratio against it as not estimable; a need beyond the largest measured
  size is marked extrapolated.
- Latency: a model is faster than another only when its p95 lies below the other's p50 (the
  difference exceeds the measured spread), said with the thread setting it holds for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.convergence import budget_words
from analysis.stats import EQUIVALENCE_MARGIN, equivalent
from analysis.study_analysis import StudyAnalysis
from reports.arms import unit
from reports.format import MISSING, count, join_words, num, pct, plural, pp, pp_interval, three

MARGIN = f"±{100 * EQUIVALENCE_MARGIN:g} pp"  # the equivalence margin in words


@dataclass
class Verdict:
    headline: str
    bullets: list[str] = field(default_factory=list)
    caveat: str = ""


def pair_row(pairwise: pd.DataFrame, n_train: int, a: str, b: str) -> dict | None:
    """The paired comparison of ``a`` against ``b`` at ``n_train``, oriented so that ``diff``
    is a − b (the table holds each pair once, in either order)."""
    at = pairwise[pairwise["n_train"] == n_train]
    direct = at[(at["model_a"] == a) & (at["model_b"] == b)]
    if len(direct):
        return direct.iloc[0].to_dict()
    flipped = at[(at["model_a"] == b) & (at["model_b"] == a)]
    if not len(flipped):
        return None
    r = flipped.iloc[0].to_dict()
    r.update(
        model_a=a,
        model_b=b,
        diff=-r["diff"],
        ci_low=-r["ci_high"],
        ci_high=-r["ci_low"],
        mean_a=r.get("mean_b"),
        mean_b=r.get("mean_a"),
        p_a_better=1 - r["p_a_better"] if pd.notna(r.get("p_a_better")) else r.get("p_a_better"),
    )
    return r


def leaders(a: StudyAnalysis, n_train: int) -> tuple[list[str], pd.DataFrame]:
    """(the models the paired test does not separate from the most accurate at ``n_train``,
    best first; that size's summary rows, best first)."""
    rows = a.summary[a.summary["n_train"] == n_train].sort_values(["mean", "model"], ascending=[False, True])
    if rows.empty:
        return [], rows
    top = rows.iloc[0]["model"]
    tied = [top]
    for model in rows["model"].iloc[1:]:
        r = pair_row(a.comparisons.pairwise, n_train, top, model)
        if r is None or not bool(r.get("significant")):
            tied.append(model)
    return tied, rows


def ties(a: StudyAnalysis, n_train: int, top: str, others: list[str]) -> list[str]:
    """The ``others`` that tie with ``top``: their paired difference's 95% CI lies within
    ±``EQUIVALENCE_MARGIN`` (``analysis.stats.equivalent``)."""
    out = []
    for model in others:
        r = pair_row(a.comparisons.pairwise, n_train, top, model)
        if r is not None and equivalent(r["ci_low"], r["ci_high"]):
            out.append(model)
    return out


def gap_words(a: StudyAnalysis, n_train: int, top: str, model: str, interval: bool = True) -> str:
    """'gap +14.3 pp, 95% CI [-2.0, +30.6] pp' (or 'gap +14.3 pp' without ``interval``): the
    paired difference of ``top`` over ``model``."""
    r = pair_row(a.comparisons.pairwise, n_train, top, model)
    if r is None:
        return "no paired runs"
    if not interval:
        return f"gap {pp(r['diff'])}"
    ci = pp_interval(r["ci_low"], r["ci_high"])
    return f"gap {pp(r['diff'])}, " + (f"95% CI {ci}" if ci != MISSING else "no interval")


def accuracy_clause(a: StudyAnalysis, n_train: int, names: dict[str, str], interval: bool = True) -> str:
    """'with 116 images ResNet-18 is the most accurate (88.7%, +14.3 pp over MobileNetV2)'; a tie
    only where the paired difference's 95% CI lies within ±1 pp; otherwise a gap the paired test
    does not resolve is written with its interval ('... has the highest mean (89.3%) but is not
    separated by the Holm-adjusted paired test from X (75.0%, gap +14.3 pp, 95% CI [+1.3, +27.3]
    pp)'). ``interval=False`` leaves the intervals to the pairs table (the headline's short form)."""
    tied, rows = leaders(a, n_train)
    if not tied:
        return ""
    means = rows.set_index("model")["mean"]
    where = f"with {count(n_train)} images"
    top = tied[0]
    if len(rows) == 1:
        return f"{where} {names[top]} reaches {pct(means[top])}"
    if len(tied) == 1:
        second = rows.iloc[1]["model"]
        r = pair_row(a.comparisons.pairwise, n_train, top, second)
        return f"{where} {names[top]} is the most accurate ({pct(means[top])}, {pp(r['diff'])} over {names[second]})"
    equal = ties(a, n_train, top, tied[1:])
    if len(equal) == len(tied) - 1:
        if len(tied) == len(rows):
            values = ", ".join(f"{names[m]} {pct(means[m])}" for m in tied)
            return (
                f"{where} all {plural(len(rows), unit(a))} tie ({values}; the 95% CI of each one's paired "
                f"difference from {names[top]} within {MARGIN})"
            )
        return (
            f"{where} {join_words([names[m] for m in tied])} tie for most accurate "
            f"({', '.join(pct(means[m]) for m in tied)}; the 95% CI of each paired difference from "
            f"{names[top]} within {MARGIN})"
        )
    unresolved = [m for m in tied[1:] if m not in equal]
    text = f"{where} {names[top]} has the highest mean ({pct(means[top])})"
    if equal:
        text += ", ties with " + join_words(
            [f"{names[m]} ({pct(means[m])}, {gap_words(a, n_train, top, m, interval)}, within {MARGIN})" for m in equal]
        )
        text += " and is"
    else:
        text += " but is"
    return (
        text
        + " not separated by the Holm-adjusted paired test from "
        + join_words([f"{names[m]} ({pct(means[m])}, {gap_words(a, n_train, top, m, interval)})" for m in unresolved])
    )


def convergence_clause(a: StudyAnalysis, names: dict[str, str]) -> str:
    """'under a 6-epoch budget; MobileNetV2 had not converged' (or '…, which the budget control
    found sufficient')."""
    budget = budget_words(a.data.config)
    cells = a.convergence
    if cells is None or cells.empty:
        return f"under {budget}"
    bad = cells[~cells["converged"]]
    if bad.empty:
        evidence = set(cells["evidence"])
        how = (
            "the budget control"
            if "budget control" in evidence
            else "their plateau stops"
            if "plateau stops" in evidence
            else "the validation curves"
        )
        return f"under {budget}, enough for every model by {how}"
    models = [names[m] for m in sorted(bad["model"].unique())]
    verb = "had" if len(models) > 1 else "had"
    return f"under {budget}; {join_words(models)} {verb} not converged"


def needed_bullet(a: StudyAnalysis, names: dict[str, str]) -> str:
    """Images needed to reach the first target, each written as what it is."""
    if a.targets.empty or a.needed.empty:
        return ""
    t = a.targets.iloc[0]
    rows = a.needed[a.needed["target"] == t["target"]]
    if (rows["status"] == "no fit").all():  # nothing estimated: the bullet would say nothing
        return ""
    finite = rows[np.isfinite(rows["n_star"].astype(float))].sort_values(["n_star", "model"])
    parts = []
    for r in rows.sort_values("model").itertuples():
        parts.append(needed_words(r, names, a.summary))
    text = f"To reach {t['label']}: " + "; ".join(parts) + "."
    if len(finite) > 1:
        best = finite.iloc[0]
        if bool(best["upper_bound"]):
            text += " How many times more images the others need is not estimable below that size."
        else:
            ratios = []
            for r in finite.iloc[1:].itertuples():
                ratio = a.ratios[
                    (a.ratios["target"] == t["target"])
                    & (
                        ((a.ratios["model_a"] == r.model) & (a.ratios["model_b"] == best["model"]))
                        | ((a.ratios["model_a"] == best["model"]) & (a.ratios["model_b"] == r.model))
                    )
                ]
                if ratio.empty or pd.isna(ratio.iloc[0]["ratio"]):
                    continue
                q = ratio.iloc[0]
                value, lo, hi = (q["ratio"], q["ci_low"], q["ci_high"])
                if q["model_a"] == best["model"]:
                    with np.errstate(divide="ignore"):
                        value, lo, hi = 1 / value, 1 / hi, 1 / lo
                mark = " (extrapolated)" if r.n_star > r.n_max_measured else ""
                ratios.append(f"{names[r.model]} {num(value, 2)}× [{num(lo, 2)}, {num(hi, 2)}]{mark}")
            if ratios:
                text += f" Relative to {names[best['model']]}: " + "; ".join(ratios) + " as many images (95% CI)."
    return text


def needed_words(r, names: dict[str, str], summary: pd.DataFrame) -> str:
    """One model's need for one target: censored, extrapolated, unreached or estimated."""
    name = names[r.model]
    if r.status == "no fit":
        return f"{name} has no fitted curve"
    if np.isinf(r.n_star):
        return f"{name} does not reach it on its fitted curve"
    if bool(r.upper_bound):
        m = summary[summary["model"] == r.model].sort_values("n_train").iloc[0]
        return (
            f"{name} reaches {pct(m['mean'])} at the smallest size ({count(m['n_train'])} images; its need lies below)"
        )
    # An interval may be open (∞: the curve's interval never reaches the target); missing: none.
    ci = "" if pd.isna(r.ci_low) or pd.isna(r.ci_high) else f" [{count(r.ci_low)}, {count(r.ci_high)}]"
    if r.n_star > r.n_max_measured:
        return f"{name} {count(r.n_star)}{ci} (extrapolated beyond the {count(r.n_max_measured)} measured)"
    return f"{name} {count(r.n_star)}{ci}"


def faster(costs: pd.DataFrame, suffix: str) -> tuple[str | None, pd.DataFrame]:
    """(the model faster than every other beyond the measured spread, or None; the rows with a
    latency, fastest p50 first) for one thread setting ('1t' or 'all'). A beats B when A's p95
    lies below B's p50."""
    p50, p95 = f"latency_p50_ms_{suffix}", f"latency_p95_ms_{suffix}"
    lat = costs.dropna(subset=[p50]).sort_values([p50, "model"])
    if len(lat) < 2:
        return None, lat
    top = lat.iloc[0]
    spread = top[p95] if pd.notna(top[p95]) else top[p50]
    if all(spread < other[p50] for _, other in lat.iloc[1:].iterrows()):
        return top["model"], lat
    return None, lat


def latency_bullet(a: StudyAnalysis, names: dict[str, str]) -> str:
    """Latency, compared only with its noise, for one thread and for all threads."""
    mc = a.model_costs
    if not mc["measured"].any():
        return ""
    parts = []
    for suffix, setting in (("1t", "1 thread"), ("all", "all threads")):
        winner, lat = faster(mc, suffix)
        if lat.empty:
            continue
        if suffix == "all" and lat["threads_all"].notna().any():
            setting = f"{int(lat['threads_all'].max())} threads"
        values = ", ".join(
            f"{names[r.model]} {milliseconds(getattr(r, f'latency_p50_ms_{suffix}'))}"
            f"/{milliseconds(getattr(r, f'latency_p95_ms_{suffix}'))}"
            for r in lat.itertuples()
        )
        if winner:
            parts.append(f"with {setting} {names[winner]} is fastest beyond the p50–p95 spread ({values} ms p50/p95)")
        else:
            parts.append(f"with {setting} no model is faster than the others beyond the p50–p95 spread ({values} ms)")
    return ("CPU latency at batch 1: " + "; ".join(parts) + ".") if parts else ""


_OFF_DESIGN = re.compile(r"model '([^']+)' at input (\d+) px interpolates inside its MobileViT blocks")


def caveat_line(a: StudyAnalysis, names: dict[str, str]) -> str:
    """The one caveat line: models run off their design, and few seeds."""
    items = []
    for text in a.data.splits.get("warnings", []) or []:
        m = _OFF_DESIGN.search(text)
        if m and m.group(1) in names:
            items.append(
                f"{names[m.group(1)]} runs off-design at {m.group(2)} px (its MobileViT blocks interpolate feature "
                "maps)"
            )
    seeds = int(a.data.done["seed"].nunique()) if len(a.data.done) else 0
    if seeds == 2:
        items.append("2 seeds per cell: every interval rests on one degree of freedom; run 5 or more seeds")
    elif 2 < seeds < 5:
        # Student t keeps its level at 3 seeds (benchmarks/bench_calibration.py), but it is wide
        items.append(
            f"{seeds} seeds per cell: the intervals keep their 95% level but are wide; "
            "5 or more seeds separate models better"
        )
    elif seeds == 1:
        items.append("1 seed per cell: no interval over seeds and no paired test")
    return "; ".join(items)


def verdict(a: StudyAnalysis, names: dict[str, str]) -> Verdict:
    """The headline, bullets and caveat of the report."""
    s = a.summary
    if s.empty:
        return Verdict("No run has finished yet, so there is no verdict to give.")
    sizes = sorted(s["n_train"].unique())
    # The headline gives the gaps; their intervals are in the full answer and the pairs table.
    clauses = [accuracy_clause(a, int(sizes[0]), names, interval=False)]
    if len(sizes) > 1:
        clauses.append(accuracy_clause(a, int(sizes[-1]), names, interval=False))
    headline = "; ".join(c for c in clauses if c)
    headline = headline[0].upper() + headline[1:] + f" ({convergence_clause(a, names)})."
    bullets = [b for b in (needed_bullet(a, names), _score_bullet(a, names), latency_bullet(a, names)) if b]
    return Verdict(headline, bullets[:3], caveat_line(a, names))


def _score_bullet(a: StudyAnalysis, names: dict[str, str]) -> str:
    sc = a.scores.dropna(subset=["score"]).sort_values(["score", "model"], ascending=[False, True])
    if len(sc) < 2:
        return ""
    values = "; ".join(
        f"{names[r.model]} {three(r.score)} [{three(r.ci_low)}, {three(r.ci_high)}]" for r in sc.itertuples()
    )
    return (
        "Data-efficiency score (mean accuracy over log training-set size, measured range only; "
        "Student t 95% CI over seeds): " + values + "."
    )


def milliseconds(v) -> str:
    """A latency in one format: two decimals below 10 ms, one below 100, whole ms above."""
    if pd.isna(v):
        return "—"
    v = float(v)
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"
