"""``study status``: what a study in the store has done, is doing and has left, its tuning and
its worker processes. Reads the store only (no torch)."""

from __future__ import annotations

from analysis.load import StudyData, load_study
from study.masking import masked_url
from study.status_grid import eta_line, grid_lines
from study.store import Store


def print_status(url: str, name: str | None) -> None:
    """Print study ``name`` (or the store's only study): its runs by status, a model x size grid
    of runs done/running/left with accuracy so far and the time left, the running and failed
    runs, its budget control, its tuning and its workers."""
    data = load_study(url, name)
    runs = data.runs
    counts = runs["status"].value_counts().to_dict()
    total = len(runs)
    print(f"study {data.name!r} ({masked_url(url)}): {total} runs")
    for status in ("done", "running", "failed", "pending"):
        label = "left" if status == "pending" else status
        print(f"  {label:8s} {counts.get(status, 0)}")
    for line in grid_lines(runs):
        print(f"  {line}")
    running = int((runs["status"] == "running").sum())
    print(f"  {eta_line(runs, running or _planned_workers(data.config))}")
    for status in ("running", "failed"):
        for _, r in runs[runs["status"] == status].iterrows():
            detail = (
                (r["error"] or "").splitlines()[0]
                if status == "failed"
                else f"attempt {r['attempts']} by {r['worker']}"
            )
            print(f"  {status}: {r['arm']} n_train={r['n_train']} seed={r['seed']}: {detail}")
    _print_control_status(url, data.name)
    _print_sequential(data)
    _print_tuning_status(url, data)
    _print_workers(url, data)


def _print_control_status(url: str, name: str) -> None:
    """The study's budget control (``study.budget_control``), when the store holds one."""
    from study.budget_control import control_name

    if control_name(name) not in Store(url, create=False).study_names():
        return
    runs = load_study(url, control_name(name)).runs
    counts = runs["status"].value_counts().to_dict()
    print(
        f"budget control {control_name(name)!r}: {counts.get('done', 0)} of {len(runs)} runs done, "
        f"{counts.get('running', 0)} running, {counts.get('failed', 0)} failed"
    )


SHOWN = 8  # intervals and runs listed by the sequential plan


def _print_sequential(data: StudyData) -> None:
    """A sequential study's plan (``--until-ci``): the intervals still wider than the target
    (computed now from the finished runs, by the rule the workers use) and the seeds scheduled
    next (the latest decision's runs still to run, or what the rule would add now)."""
    from analysis.sequential import MORE, Target, interval_words, plan_next

    seq = data.config.get("sequential") or {}
    if not seq.get("until_ci") and not len(data.sequential):
        return
    target = Target.from_config(data.config)
    budget = f", {target.budget_hours:g} h of training at most" if target.budget_hours else ""
    print(f"sequential: target ±{seq.get('until_ci', 0):g} points, at most {target.max_seeds} seeds per cell{budget}")
    plan = plan_next(data.runs, target, len(data.y_test) or None)
    short = plan.short
    print(f"  {len(short)} interval(s) wider than the target now (training so far {plan.spent_hours:.2f} h)")
    for _, r in short.head(SHOWN).iterrows():
        r = r.to_dict()
        r["half_width"] = r["half_width"] if r["half_width"] < float("inf") else None
        print(f"    {interval_words(r)}{' (at the seed cap)' if r['capped'] else ''}")
    rounds = data.sequential
    pending = data.unfinished
    if len(rounds) and rounds.iloc[-1]["reason"] == MORE and len(pending):
        last = rounds.iloc[-1]
        added = set(last["added"])
        keys = [k for k in _keys(pending) if k in added]
        print(f"  scheduled next (round {last['round']}): {len(keys)} run(s) still to run")
        for key in keys[:SHOWN]:
            print(f"    {key}")
    elif len(pending):
        print(f"  the next seeds are decided when the {len(pending)} run(s) left are finished; now they would be:")
        for arm, kind, value, seed in plan.add[:SHOWN]:
            print(f"    {arm} {kind}={value:g} seed {seed}")
    elif len(rounds):
        print(f"  stopped (round {rounds.iloc[-1]['round']}): {rounds.iloc[-1]['reason']}")


def _keys(runs) -> list[str]:
    """Cell keys of runs (as the store names them)."""
    from study.store import Cell

    return [
        Cell(r["model"], r["size_kind"], float(r["size_value"]), int(r["seed"]), r["arm"]).key
        for _, r in runs.iterrows()
    ]


def _planned_workers(config: dict) -> int:
    """Parallel workers a study plans when none is running: its jobs setting, else one per core."""
    import os

    return int(config.get("jobs") or os.cpu_count() or 1)


def _print_workers(url: str, data: StudyData) -> None:
    """Each worker process that worked on the study: what it does, when it was last heard from
    (by the database's clock), and what it finished; silent past the grace period = presumed dead."""
    store = Store(url, create=False)
    workers = store.workers(store.study(data.name).id)
    if not workers:
        return
    grace = float(data.config.get("grace_period", 180.0))
    now = store.now()
    alive = [
        w
        for w in workers
        if w.heartbeat_at and (now - w.heartbeat_at).total_seconds() <= grace and not w.doing.startswith("idle")
    ]
    print(f"workers: {len(alive)} active of {len(workers)} (grace period {grace:g} s)")
    for w in workers:
        silent = (now - w.heartbeat_at).total_seconds() if w.heartbeat_at else float("inf")
        state = "presumed dead" if silent > grace and not w.doing.startswith("idle") else w.doing
        print(
            f"  {w.name}: {state}; last heartbeat {silent:.0f} s ago; {w.runs_done} run(s), {w.trials_done} trial(s) "
            "done"
        )


def _print_tuning_status(url: str, data: StudyData) -> None:
    """Per tuned cell: its job's state, trials finished of the budget, and the best so far."""
    from analysis.tuning import tuning_tables

    store = Store(url, create=False)
    jobs = store.tuning_jobs(store.study(data.name).id)
    if not jobs:
        return
    budget = int(data.config.get("tune", {}).get("trials", 0))
    best = tuning_tables(url, data.name).best.set_index("optuna_study")
    print(f"tuning: {sum(j.status == 'done' for j in jobs)} of {len(jobs)} cells tuned ({budget} trials each)")
    for job in jobs:
        size = f"{job.size_value:g}" if job.size_kind == "fraction" else str(int(job.size_value))
        line = f"  {job.status:8s} {job.arm or job.model} {job.size_kind}={size}:"
        if job.optuna_study in best.index:
            b = best.loc[job.optuna_study]
            line += f" {b['n_complete']} complete, {b['n_pruned']} pruned, {b['n_failed']} failed of {budget}"
            if b["n_complete"]:
                line += f"; best val_acc {b['best_value']:.3f} (trial #{b['best_trial']})"
        else:
            line += f" 0 of {budget} trials"
        if job.status == "failed" and job.error:
            line += f"; error: {job.error.splitlines()[0]}"
        print(line)
