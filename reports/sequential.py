"""The report's section on a sequential study (``--until-ci``, analysis/sequential.py): why it
stopped, how many seeds each cell got, and the training time it saved against a fixed grid.

Written only for studies run with a target width; ``write_report`` puts it before the Methods
section of both pages and writes its tables as CSV. Reads only what the loader returns.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from jinja2 import Environment

from analysis.group_sequential import POCOCK
from analysis.sequential import (
    BUDGET,
    CAP,
    MET,
    MORE,
    Target,
    compute_saved,
    group_sequential_pairs,
    interval_words,
    seeds_per_cell,
)
from analysis.study_analysis import StudyAnalysis


def is_sequential(a: StudyAnalysis) -> bool:
    """Whether the study ran with a target width (or recorded sequential decisions)."""
    seq = a.data.config.get("sequential") or {}
    return bool(seq.get("until_ci")) or len(a.data.sequential) > 0


def stop_sentence(a: StudyAnalysis) -> str:
    """Why the study stopped (or that it has not), in words."""
    seq = a.data.config.get("sequential") or {}
    rounds = a.data.sequential
    unfinished = len(a.data.unfinished)
    if not len(rounds):
        return (
            f"Not started: {unfinished} run(s) of the first {a.data.config.get('seeds', '?')} seeds of every cell are "
            "not finished yet, so no seed has been added."
        )
    last = rounds.iloc[-1]
    short = list(last["short"] or [])
    widest = f" The widest: {interval_words(short[0])}." if short else ""
    if unfinished or last["reason"] == MORE:
        return f"Not finished: {unfinished} run(s) added by round {last['round']} are still to run."
    if last["reason"] == MET:
        width = seq.get("until_ci", 0)
        return f"Stopped because the target width was met: every interval of the answer is within ±{width:g} points."
    if last["reason"] == CAP:
        return (
            f"Stopped at the seed cap: {len(short)} interval(s) are still wider than the target, and each needs a cell "
            f"that already has {seq.get('max_seeds')} seeds (--max-seeds).{widest}"
        )
    if last["reason"] == BUDGET:
        return (
            f"Stopped by the time budget: the runs had trained {last['spent_hours']:.2f} h of the "
            f"{seq.get('budget_hours', 0):g} h allowed (--budget-hours); {len(short)} interval(s) are still wider "
            f"than the target.{widest}"
        )
    return f"Stopped: {last['reason']}."


def render_sequential(a: StudyAnalysis, env: Environment, folder: Path) -> tuple[str, str]:
    """(Markdown, HTML) of the sequential section, its tables written to ``folder`` as CSV; empty
    strings for a study with a fixed number of seeds."""
    if not is_sequential(a):
        return "", ""
    seq = a.data.config.get("sequential") or {}
    seeds = seeds_per_cell(a.data.runs)
    wide = seeds.pivot_table(index="n_train", columns="arm", values="seeds").reset_index()
    seeds.to_csv(folder / "sequential_seeds.csv", index=False)
    rounds = a.data.sequential
    rounds.assign(added=rounds["added"].map(len)).drop(columns=["short", "target"]).to_csv(
        folder / "sequential_rounds.csv", index=False
    )
    cost = compute_saved(a.data.runs)
    target = Target.from_config(a.data.config)
    n_test = len(a.data.y_test) or None
    pairs = group_sequential_pairs(a.data.runs, target, n_test)
    pairs.to_csv(folder / "sequential_pairs.csv", index=False)
    context = {
        "width": seq.get("until_ci", 0),
        "start_seeds": a.data.config.get("seeds", 0),
        "max_seeds": seq.get("max_seeds", 0),
        "budget_hours": seq.get("budget_hours", 0),
        "needed_width": seq.get("needed_width", 0),
        "rounds": int((rounds["reason"] == MORE).sum()),
        "added": int(rounds["added"].map(len).sum()) if len(rounds) else 0,
        "stop": stop_sentence(a),
        "arms": [c for c in wide.columns if c != "n_train"],
        "seeds": _records(wide),
        "cost": cost,
        "spending": "Pocock" if target.spending == POCOCK else "O'Brien–Fleming",
        "pairs": _records(pairs),
        "n_decided": int(pairs["decided"].sum()) if len(pairs) else 0,
    }
    return env.get_template("sequential.md.j2").render(**context), env.get_template("sequential.html.j2").render(
        **context
    )


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]
