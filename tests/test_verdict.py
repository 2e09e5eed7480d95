"""The verdict and the paper tables say no more than the analysis computed: ties by the
report's own test are called ties only within the equivalence margin (a wide gap the test
cannot resolve is written with its interval), censored needs and their ratios are not written
as numbers, latency is compared with its spread, and the LaTeX tables parse."""

from __future__ import annotations

import re

import pandas as pd
from synthetic import make_study

from analysis.load import load_study
from analysis.stats import EQUIVALENCE_MARGIN
from analysis.study_analysis import analyse
from reports.format import display_names, pct, pp
from reports.narrative import best_sentence
from reports.tables import latex_escape, oriented_pairs, pairs_table, to_latex
from reports.verdict import faster, leaders, needed_bullet, verdict


def _analysed(path, curves, seeds=4, **kwargs):
    study = make_study(path / "study.db", curves=curves, seeds=seeds, epochs=4, val_curve="plateau", **kwargs)
    data = load_study(study.url, study.name)
    a = analyse(data, n_boot_curves=30, n_boot_stats=300)
    return a, display_names(data.config, curves)


def test_a_tie_is_called_a_tie_only_when_the_difference_lies_within_the_margin(tmp_path):
    # Two models on one curve with little noise: the paired difference's 95% CI lies within ±1 pp.
    curves = {"resnet18": (0.95, 3.0, 0.5), "mobilevit_xxs": (0.95, 3.0, 0.5), "mobilenetv2_100": (0.70, 9.0, 0.5)}
    a, names = _analysed(tmp_path, curves, noise=0.002)
    largest = int(a.summary["n_train"].max())
    tied, _ = leaders(a, largest)
    assert set(tied) == {"resnet18", "mobilevit_xxs"}  # the same curve: the paired test cannot separate them
    pw = a.comparisons.pairwise
    pair = pw[(pw["n_train"] == largest) & pw["model_a"].isin(tied) & pw["model_b"].isin(tied)].iloc[0]
    assert not pair["significant"] and -EQUIVALENCE_MARGIN <= pair["ci_low"] <= pair["ci_high"] <= EQUIVALENCE_MARGIN
    v = verdict(a, names)
    # the headline rests on the primary comparison (score differences, Holm over the 3 pairs) ...
    assert "3 pairs" in v.primary and "data-efficiency score" in v.primary and "secondary" in v.primary
    assert "ahead of MobileNetV2 by" in v.headline and "ties with" in v.headline
    # ... and the per-size comparisons are a secondary bullet
    per_size = v.bullets[0]
    assert per_size.startswith("Per size (secondary")
    assert "ResNet-18 and MobileViT-XXS tie for most accurate" in per_size or (
        "MobileViT-XXS and ResNet-18 tie for most accurate" in per_size
    )
    assert "is the most accurate" not in per_size.split(";")[-1]
    table, _ = pairs_table(a, names)
    assert set(table.loc[table["Other (B)"] == "MobileNetV2", "Significant"]) == {"yes"}
    assert set(table.loc[table["Other (B)"] != "MobileNetV2", "Significant"]) == {"no (tie)"}
    # The pairs table turns each pair so the better model comes first, its interval with it.
    oriented = oriented_pairs(pw)
    assert (oriented["diff"] >= 0).all()
    assert ((oriented["ci_low"] <= oriented["diff"]) & (oriented["diff"] <= oriented["ci_high"])).all()
    width = (oriented["ci_high"] - oriented["ci_low"]).round(9)
    assert width.tolist() == (pw["ci_high"] - pw["ci_low"]).round(9).tolist()


def test_a_large_gap_the_test_cannot_resolve_is_not_called_a_tie(tmp_path):
    # 8 points apart with a lot of seed noise and 3 seeds: not significant, but no tie either.
    curves = {"resnet18": (0.95, 3.0, 0.5), "mobilevit_xxs": (0.87, 3.0, 0.5)}
    a, names = _analysed(tmp_path, curves, seeds=3, noise=0.1)
    largest = int(a.summary["n_train"].max())
    assert leaders(a, largest)[0] == ["resnet18", "mobilevit_xxs"]
    r = a.comparisons.pairwise.query("n_train == @largest").iloc[0]
    assert not r["significant"] and abs(r["diff"]) > 0.05 and r["ci_high"] - r["ci_low"] > 2 * EQUIVALENCE_MARGIN
    v = verdict(a, names)
    assert "not separated from MobileViT-XXS" in v.headline and "tie" not in v.headline
    per_size = v.bullets[0]
    assert "tie" not in per_size
    last = per_size.split(";")[-1]
    assert "ResNet-18 has the highest mean" in last and "not separated by the Holm-adjusted paired test" in last
    other = pct(a.summary.query("n_train == @largest and model == 'mobilevit_xxs'")["mean"].iloc[0])
    assert f"MobileViT-XXS ({other}, gap {pp(abs(r['diff']))})" in last  # the headline's short form
    assert f"MobileViT-XXS ({other}, gap {pp(abs(r['diff']))}, 95% CI" in best_sentence(a, names)  # the full answer
    table, _ = pairs_table(a, names)
    assert set(table["Significant"]) == {"no"}


def test_a_censored_ratio_is_not_printed_as_a_number(tmp_path):
    # resnet18 reaches the target (90% of the best full-data accuracy) already at the smallest
    # size: its need is censored there, so the others' ratio to it is only a bound.
    curves = {"resnet18": (0.96, 0.5, 0.5), "mobilenetv2_100": (0.93, 6.0, 0.55)}
    a, names = _analysed(tmp_path, curves, fractions=(0.1, 0.25, 0.5, 1.0))
    first = a.targets["target"].iloc[0]
    row = a.needed[(a.needed["model"] == "resnet18") & (a.needed["target"] == first)].iloc[0]
    assert row["upper_bound"]
    text = needed_bullet(a, names)
    assert "ResNet-18 reaches" in text and "at the smallest size" in text and "not estimable" in text
    assert "×" not in text and not re.search(r"\d\.\d+×", text)


def test_latency_counts_as_faster_only_beyond_the_measured_spread():
    costs = pd.DataFrame(
        {
            "model": ["a", "b", "c"],
            "latency_p50_ms_1t": [2.0, 3.0, 4.0],
            "latency_p95_ms_1t": [2.5, 3.5, 4.5],
            "latency_p50_ms_all": [2.0, 2.1, 4.0],
            "latency_p95_ms_all": [2.6, 2.4, 4.5],
        }
    )
    assert faster(costs, "1t")[0] == "a"  # a's p95 (2.5) lies below b's p50 (3.0)
    assert faster(costs, "all")[0] is None  # a's p95 (2.6) overlaps b's p50 (2.1): no winner


def test_latex_tables_escape_names_and_balance_their_environments():
    table = pd.DataFrame(
        {"Model": ["resnet_18 & co", "50% $net#1"], "Accuracy (%) [95% CI]": ["97.1 [96.0, 98.2]", "—"]}
    )
    tex = to_latex(table, "Accuracy of A_B", "tab:acc")
    assert_balanced_latex(tex, columns=2)
    assert r"resnet\_18 \& co" in tex and r"50\% \$net\#1" in tex and r"A\_B" in tex
    assert latex_escape("a~b^c\\d{e}") == r"a\textasciitilde{}b\textasciicircum{}c\textbackslash{}d\{e\}"


def assert_balanced_latex(tex: str, columns: int) -> None:
    """Environments open and close in order, booktabs rules are there, every row has
    ``columns`` cells, and no special character is left unescaped."""
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, env
    assert stack == []
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    body = tex[tex.index(r"\toprule") : tex.index(r"\bottomrule")]
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    assert rows and all(len(re.split(r"(?<!\\)&", line)) == columns for line in rows)
    for line in rows:  # outside escapes and inline maths no special character is left
        plain = re.sub(r"\\[&%$#_{}]|\$[^$]*\$", "", line)
        assert not re.search(r"[%#_$]", plain), line


def test_the_methods_warm_up_is_the_training_loops():
    from reports.methods import WARMUP_DIVISOR
    from study.config import WARMUP_DIVISOR as TRAINED

    assert WARMUP_DIVISOR == TRAINED
