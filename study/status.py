"""``study status``: what a study in the store has done, is doing and has left, its tuning and
its worker processes. Reads the store only (no torch)."""

from __future__ import annotations

from analysis.load import StudyData, load_study
from study.masking import masked_url
from study.store import Store


def print_status(url: str, name: str | None) -> None:
    """Print study ``name`` (or the store's only study): its runs by status, the running and
    failed ones, its tuning and its workers."""
    data = load_study(url, name)
    runs = data.runs
    counts = runs["status"].value_counts().to_dict()
    total = len(runs)
    print(f"study {data.name!r} ({masked_url(url)}): {total} runs")
    for status in ("done", "running", "failed", "pending"):
        label = "left" if status == "pending" else status
        print(f"  {label:8s} {counts.get(status, 0)}")
    for status in ("running", "failed"):
        for _, r in runs[runs["status"] == status].iterrows():
            detail = (
                (r["error"] or "").splitlines()[0]
                if status == "failed"
                else f"attempt {r['attempts']} by {r['worker']}"
            )
            print(f"  {status}: {r['arm']} n_train={r['n_train']} seed={r['seed']}: {detail}")
    _print_tuning_status(url, data)
    _print_workers(url, data)


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
