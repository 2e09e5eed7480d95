"""Sequential seeds (``--until-ci``): when a study has nothing left to run, decide once, under
the store's lock, which cells get one more seed (``analysis.sequential.plan_next``), and insert
those runs as ordinary pending runs with the decision beside them (``sequential_rounds``).

Every worker of every machine calls ``extend`` when it finds no work: the first takes the lock,
reads the finished runs through the analysis loader and decides; the others find the new runs
pending (or the study stopped) when the lock is theirs. A killed study resumes the same plan:
the runs and the decision are written in one transaction, and the rule is deterministic, so a
decision not recorded is taken again from the same runs.
"""

from __future__ import annotations

import dataclasses

from analysis.load import load_study
from analysis.sequential import MORE, Plan, Target, plan_next
from study.config import StudyConfig
from study.store import Cell, NamedLock, Store

SHORT_KEPT = 50  # intervals short of the target recorded with a decision, widest first


def extend(cfg: StudyConfig, store: Store, study_id: int) -> bool:
    """Whether the study has work after deciding: runs pending or running (added now, or by
    another worker that decided first). False when the study is not sequential or stops."""
    if not cfg.sequential.enabled:
        return False
    with NamedLock(store.engine, f"sequential:{cfg.name}"):
        counts = store.counts(study_id)
        if counts["pending"] or counts["running"]:
            return True
        data = load_study(cfg.storage_url, cfg.name)
        target = Target.from_config({"sequential": dataclasses.asdict(cfg.sequential), "seeds": cfg.seeds})
        plan = plan_next(data.runs, target, len(data.y_test) or None)
        sizes = data.runs.drop_duplicates(["arm", "size_kind", "size_value"]).set_index(
            ["arm", "size_kind", "size_value"]
        )
        cells = []
        for arm, kind, value, seed in plan.add:
            row = sizes.loc[(arm, kind, value)]
            cell = Cell(cfg.arm(arm).model, kind, value, seed, arm)
            cells.append((cell, int(row["n_train"]), float(row["fraction"])))
        settings = dataclasses.asdict(cfg.sequential)
        added = store.add_round(study_id, plan.reason, cells, short_list(plan), settings, round(plan.spent_hours, 6))
        return plan.reason == MORE and added > 0


def short_list(plan: Plan) -> list[dict]:
    """The intervals still wider than the target, widest first, as stored with a decision."""
    rows = plan.short.head(SHORT_KEPT)
    return [
        {
            "kind": r["kind"],
            "arm": r["arm"],
            "other": r["other"],
            "n_train": int(r["n_train"]),
            "n_seeds": int(r["n_seeds"]),
            "half_width": round(float(r["half_width"]), 6) if r["half_width"] < float("inf") else None,
            "capped": bool(r["capped"]),
        }
        for _, r in rows.iterrows()
    ]
