"""The report's answer in words: sentences built from the analysis tables, so the reader gets
the conclusion before the evidence. Plain text; the templates escape it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.study_analysis import StudyAnalysis
from reports.arms import unit
from reports.format import count, interval, named, num, plural, pp, three
from reports.format import p_is as fmt_p
from reports.tables import oriented_pairs
from reports.verdict import accuracy_clause, latency_bullet, needed_words


def study_sentence(a: StudyAnalysis, names: dict[str, str] | None = None) -> str:
    """What was run: models, sizes, seeds, and how much of it finished."""
    runs, done = a.data.runs, a.data.done
    models = sorted(runs["model"].unique())
    names = names or {m: m for m in models}
    sizes = sorted(runs["n_train"].unique())
    seeds = runs["seed"].nunique()
    name = a.data.dataset.get("name", "the dataset")
    text = (
        f"The study compares {plural(len(models), unit(a))} ({', '.join(names[m] for m in models)}) on "
        f"{plural(len(sizes), 'nested subset size')} of {name} "
        f"({count(sizes[0]) if sizes else '—'} to {count(sizes[-1]) if sizes else '—'} training images) with "
        f"{plural(seeds, 'seed')} each"
    )
    text += f"; {len(done)} of {len(runs)} planned runs finished"
    missing = len(runs) - len(done)
    if missing:
        failed = len(a.data.failed)
        text += f" ({failed} failed, {missing - failed} not run yet)" if failed else f" ({missing} not run yet)"
    return text + "."


def best_sentence(a: StudyAnalysis, names: dict[str, str]) -> str:
    """Which model is most accurate at the largest size, or which tie (by the paired test)."""
    s = a.summary
    if s.empty:
        return "No run has finished yet, so there is no answer to give."
    clause = accuracy_clause(a, int(s["n_train"].max()), names)
    return clause[0].upper() + clause[1:] + "."


def needed_sentences(a: StudyAnalysis, names: dict[str, str]) -> list[str]:
    """Images needed per target, each written as what it is (estimate, extrapolated, censored
    at the smallest size, unreached), with the ratios that can be estimated."""
    out = []
    for _, t in a.targets.iterrows():
        rows = a.needed[a.needed["target"] == t["target"]]
        if rows.empty:
            continue
        parts = [needed_words(r, names, a.summary) for r in rows.sort_values("model").itertuples()]
        text = f"To reach {t['label']} (95% CI): " + "; ".join(parts) + "."
        reached = rows[np.isfinite(rows["n_star"].astype(float))].sort_values(["n_star", "model"])
        if len(reached) > 1:
            best = reached.iloc[0]
            if bool(best["upper_bound"]):
                text += (
                    f" {names[best['model']]} reaches it at the smallest size; the ratio of the others to it is not "
                    "estimable below that size."
                )
            else:
                ratios = []
                for _, r in reached.iloc[1:].iterrows():
                    value, lo, hi = _ratio_to(a.ratios, t["target"], r["model"], best["model"])
                    if not np.isfinite(value):
                        continue
                    mark = " (extrapolated)" if r["n_star"] > r["n_max_measured"] else ""
                    ratios.append(f"{names[r['model']]} {num(value, 2)}× {interval(lo, hi, lambda v: num(v, 2))}{mark}")
                if ratios:
                    text += f" Relative to {names[best['model']]}, the others need: " + "; ".join(ratios) + " as many."
        out.append(text)
    return out


def _ratio_to(ratios: pd.DataFrame, target: float, model: str, reference: str) -> tuple[float, float, float]:
    """n*_model / n*_reference with its interval, from whichever order the ratio table holds."""
    rows = ratios[ratios["target"] == target]
    direct = rows[(rows["model_a"] == model) & (rows["model_b"] == reference)]
    if len(direct):
        r = direct.iloc[0]
        return r["ratio"], r["ci_low"], r["ci_high"]
    r = rows[(rows["model_a"] == reference) & (rows["model_b"] == model)].iloc[0]
    with np.errstate(divide="ignore"):
        return 1 / r["ratio"], 1 / r["ci_high"], 1 / r["ci_low"]


def _ratio_extrapolation(ratios: pd.DataFrame, target: float, model: str, reference: str) -> str:
    """' (extrapolated 71× beyond the data)' when the ratio rests on an n* beyond the data."""
    rows = ratios[(ratios["target"] == target) & ratios["model_a"].isin([model, reference])]
    rows = rows[rows["model_b"].isin([model, reference])]
    if not len(rows) or not rows["extrapolated"].iloc[0]:
        return ""
    return f" (extrapolated {rows['extrapolation_factor'].iloc[0]:.2g}× beyond the data)"


def crossover_sentences(a: StudyAnalysis, names: dict[str, str] | None = None) -> list[str]:
    """Where one model's curve overtakes another's, with its 95% interval (analysis.efficiency.crossovers);
    one sentence when no fitted curves cross."""
    cross = a.crossovers
    if cross.empty:
        return []
    found = cross[cross["status"] != "no crossover"]
    if found.empty:
        return ["No two fitted learning curves cross within the measured range or up to 4× beyond it."]
    # the interval spans every size where the difference's 95% interval holds 0: it covers at least 95%
    return [
        named(r["sentence"], names or {}) + (" (interval of at least 95%)." if pd.notna(r["ci_low"]) else ".")
        for _, r in found.iterrows()
    ]


def score_difference_sentence(a: StudyAnalysis, names: dict[str, str] | None = None) -> str:
    """Which data-efficiency scores differ (paired over seeds, Holm), from ``a.score_differences``."""
    sd = oriented_pairs(a.score_differences.dropna(subset=["diff"]))
    if sd.empty:
        return ""
    sig = sd[sd["significant"]]
    items = [
        f"{(names or {}).get(r['model_a'], r['model_a'])} − {(names or {}).get(r['model_b'], r['model_b'])} "
        f"{three(r['diff'], sign=True)} [{three(r['ci_low'], sign=True)}, {three(r['ci_high'], sign=True)}]"
        for _, r in sig.iterrows()
    ]
    head = (
        f"{len(sig)} of {len(sd)} differences in data-efficiency score are significant (paired t-test over seeds, "
        f"Holm-adjusted p < {a.comparisons.alpha:g})"
    )
    return head + (": " + "; ".join(items) + "." if items else ".")


def efficiency_sentence(a: StudyAnalysis, names: dict[str, str]) -> str:
    sc = a.scores.dropna(subset=["score"]).sort_values(["score", "model"], ascending=[False, True])
    if sc.empty:
        return ""
    top = sc.iloc[0]
    text = (
        f"Over the measured range, the highest data-efficiency score is {names[top['model']]}'s "
        f"({three(top['score'])} {interval(top['ci_low'], top['ci_high'], three)}: mean accuracy averaged over log "
        "training-set size)"
    )
    others = [f"{names[r['model']]} {three(r['score'])}" for _, r in sc.iloc[1:].iterrows()]
    return text + (f"; then {', '.join(others)}." if others else ".")


def significance_sentences(a: StudyAnalysis, names: dict[str, str]) -> list[str]:
    """How many differences are significant (paired t-test over seeds, Holm), which ones at the
    largest size, and what McNemar's test on the test predictions adds."""
    pw = a.comparisons.pairwise
    alpha = a.comparisons.alpha
    if pw.empty:
        return ["With a single model (or no paired runs) there is nothing to compare."]
    tested = int(pw["p_t"].notna().sum())
    sig = pw[pw["significant"]]
    out = [
        f"{len(sig)} of {len(pw)} pairwise differences are significant (paired t-test over seeds, Holm-adjusted p < "
        f"{alpha:g}; "
        f"{tested} could be tested)."
    ]
    largest = pw[pw["n_train"] == pw["n_train"].max()]
    items = [
        f"{names[a_]} over {names[b_]} {pp(abs(r['diff']))} (Holm-adjusted {fmt_p(r['p_t_holm'])})"
        for _, r in largest[largest["significant"]].iterrows()
        for a_, b_ in [(r["model_a"], r["model_b"]) if r["diff"] >= 0 else (r["model_b"], r["model_a"])]
    ]
    if items:
        out.append(f"With {count(largest['n_train'].iloc[0])} training images: " + "; ".join(items) + ".")
    elif len(largest):
        out.append(f"With {count(largest['n_train'].iloc[0])} training images no difference is significant.")
    mc = pw[pw["p_mcnemar_holm"] < alpha]
    if len(mc):
        out.append(
            f"McNemar's exact test on the test predictions separates {len(mc)} of {len(pw)} pairs (Holm-adjusted); "
            "it measures "
            "the test set's sampling noise for these trained models, not the variation between training runs."
        )
    return out


def answer_paragraphs(a: StudyAnalysis, names: dict[str, str] | None = None) -> list[str]:
    """The full answer, folded below the verdict: a few short paragraphs of plain text."""
    names = names or {m: m for m in a.data.runs["model"].unique()}
    paragraphs = [study_sentence(a, names) + " " + best_sentence(a, names)]
    needed = needed_sentences(a, names)
    if needed:
        paragraphs.append(" ".join(needed))
    eff = " ".join(x for x in (efficiency_sentence(a, names), score_difference_sentence(a, names)) if x)
    if eff:
        paragraphs.append(eff)
    cross = crossover_sentences(a, names)
    if cross:
        paragraphs.append(" ".join(cross))
    paragraphs.append(" ".join(significance_sentences(a, names)))
    if not a.model_costs["measured"].any():
        paragraphs.append("Inference costs (MACs, latency, size) were not measured for this study.")
    else:
        cost = latency_bullet(a, names)
        if cost:
            paragraphs.append(cost)
    return paragraphs


def missing_summary(a: StudyAnalysis) -> pd.DataFrame:
    """Planned cells without a finished run, per model and size: what the report cannot show."""
    runs = a.data.runs
    missing = runs[runs["status"] != "done"]
    if missing.empty:
        return pd.DataFrame(columns=["model", "n_train", "status", "seeds"])
    return (
        missing.groupby(["model", "n_train", "status"], sort=True)["seed"]
        .apply(lambda s: ", ".join(str(v) for v in sorted(s)))
        .reset_index()
        .rename(columns={"seed": "seeds"})
    )
