"""The report's answer in words: sentences built from the analysis tables, so the reader gets
the conclusion before the evidence. Plain text; the templates escape it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.study_analysis import StudyAnalysis
from reports.format import count, interval, num, pct, pp
from reports.format import p_is as fmt_p


def study_sentence(a: StudyAnalysis) -> str:
    """What was run: models, sizes, seeds, and how much of it finished."""
    runs, done = a.data.runs, a.data.done
    models = sorted(runs["model"].unique())
    sizes = sorted(runs["n_train"].unique())
    seeds = runs["seed"].nunique()
    name = a.data.dataset.get("name", "the dataset")
    text = (
        f"The study compares {len(models)} model(s) ({', '.join(models)}) on {len(sizes)} nested subset size(s) of "
        f"{name} "
        f"({count(sizes[0]) if sizes else '—'} to {count(sizes[-1]) if sizes else '—'} training images) with {seeds} "
        "seed(s) each"
    )
    text += f"; {len(done)} of {len(runs)} planned runs finished"
    missing = len(runs) - len(done)
    if missing:
        failed = len(a.data.failed)
        text += f" ({failed} failed, {missing - failed} not run yet)" if failed else f" ({missing} not run yet)"
    return text + "."


def best_sentence(a: StudyAnalysis) -> str:
    """Which model is most accurate at the largest size, and by how much."""
    s = a.summary
    if s.empty:
        return "No run has finished yet, so there is no answer to give."
    largest = s[s["n_train"] == s["n_train"].max()].sort_values(["mean", "model"], ascending=[False, True])
    top = largest.iloc[0]
    text = (
        f"With all {count(top['n_train'])} training images, {top['model']} is the most accurate: {pct(top['mean'])} "
        f"{interval(top['ci_low'], top['ci_high'])}"
    )
    if len(largest) > 1:
        second = largest.iloc[1]
        text += f", ahead of {second['model']} at {pct(second['mean'])}"
    return text + "."


def needed_sentences(a: StudyAnalysis) -> list[str]:
    """Images needed per target, and how many times more the other models need than the most
    data-efficient one (from the paired ratio table)."""
    out = []
    for _, t in a.targets.iterrows():
        rows = a.needed[a.needed["target"] == t["target"]]
        parts = []
        for _, r in rows.iterrows():
            if r["status"] == "no fit":
                parts.append(f"{r['model']}: no fitted curve")
            elif np.isinf(r["n_star"]):
                parts.append(f"{r['model']}: not reached on its fitted curve")
            else:
                flag = f" (extrapolated {r['extrapolation_factor']:.2g}× beyond the data)" if r["extrapolated"] else ""
                if r["upper_bound"]:
                    parts.append(f"{r['model']} at most {count(r['n_star'])} (reached at the smallest measured size)")
                else:
                    parts.append(
                        f"{r['model']} {count(r['n_star'])} {interval(r['ci_low'], r['ci_high'], count)}{flag}"
                    )
        if not parts:
            continue
        text = f"To reach {t['label']}, the models need: " + "; ".join(parts) + " training images (95% CI)."
        reached = rows[np.isfinite(rows["n_star"].astype(float))].sort_values(["n_star", "model"])
        if len(reached) > 1:
            best = reached.iloc[0]["model"]
            others = [
                m for m, bounded in zip(reached["model"].iloc[1:], reached["upper_bound"].iloc[1:]) if not bounded
            ]
            ratios = [_ratio_to(a.ratios, t["target"], m, best) for m in others]
            at_least = "at least " if reached.iloc[0]["upper_bound"] else ""
            ratios = [
                f"{m} {at_least}{num(r, 2)}× {interval(lo, hi, lambda v: num(v, 2))}"
                + _ratio_extrapolation(a.ratios, t["target"], m, best)
                for m, (r, lo, hi) in zip(others, ratios)
            ]
            if ratios:
                text += (
                    f" Relative to {best}, the others need: "
                    + "; ".join(ratios)
                    + " as many images (intervals of at least 95%)."
                )
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


def crossover_sentences(a: StudyAnalysis) -> list[str]:
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
        f"{r['sentence']}" + (" (interval of at least 95%)." if pd.notna(r["ci_low"]) else ".")
        for _, r in found.iterrows()
    ]


def score_difference_sentence(a: StudyAnalysis) -> str:
    """Which data-efficiency scores differ (paired over seeds, Holm), from ``a.score_differences``."""
    sd = a.score_differences.dropna(subset=["diff"])
    if sd.empty:
        return ""
    sig = sd[sd["significant"]]
    items = [
        f"{r['model_a']} − {r['model_b']} {num(r['diff'])} {interval(r['ci_low'], r['ci_high'], num)}"
        for _, r in sig.iterrows()
    ]
    head = (
        f"{len(sig)} of {len(sd)} differences in data-efficiency score are significant (paired t-test over seeds, "
        f"Holm-adjusted p < {a.comparisons.alpha:g})"
    )
    return head + (": " + "; ".join(items) + "." if items else ".")


def efficiency_sentence(a: StudyAnalysis) -> str:
    sc = a.scores.dropna(subset=["score"]).sort_values(["score", "model"], ascending=[False, True])
    if sc.empty:
        return ""
    top = sc.iloc[0]
    text = (
        f"Over the measured range, the most data-efficient model is {top['model']} (score {num(top['score'])} "
        f"{interval(top['ci_low'], top['ci_high'], num)}: its mean accuracy averaged over log training-set size)"
    )
    others = [f"{r['model']} {num(r['score'])}" for _, r in sc.iloc[1:].iterrows()]
    return text + (f"; then {', '.join(others)}." if others else ".")


def significance_sentences(a: StudyAnalysis) -> list[str]:
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
        f"{r['model_a']} vs {r['model_b']} {pp(r['diff'])} ({fmt_p(r['p_t_holm'])})"
        for _, r in largest[largest["significant"]].iterrows()
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


def cost_sentence(a: StudyAnalysis) -> str:
    mc = a.model_costs
    if not mc["measured"].any():
        return "Inference costs (MACs, latency, size) were not measured for this study."
    lat = mc.dropna(subset=["latency_p50_ms_1t"]).sort_values(["latency_p50_ms_1t", "model"])
    if lat.empty:
        return ""
    fastest = lat.iloc[0]
    return (
        f"On CPU at batch 1 with one thread, {fastest['model']} is the fastest ({num(fastest['latency_p50_ms_1t'])} "
        "ms p50)"
        + (
            f"; {', '.join(f'{r.model} {num(r.latency_p50_ms_1t)} ms' for r in lat.iloc[1:].itertuples())}."
            if len(lat) > 1
            else "."
        )
    )


def answer_paragraphs(a: StudyAnalysis) -> list[str]:
    """The answer, first in the report: a few short paragraphs of plain text."""
    paragraphs = [study_sentence(a) + " " + best_sentence(a)]
    needed = needed_sentences(a)
    if needed:
        paragraphs.append(" ".join(needed))
    eff = " ".join(x for x in (efficiency_sentence(a), score_difference_sentence(a)) if x)
    if eff:
        paragraphs.append(eff)
    cross = crossover_sentences(a)
    if cross:
        paragraphs.append(" ".join(cross))
    paragraphs.append(" ".join(significance_sentences(a)))
    cost = cost_sentence(a)
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
