"""Sequential seeds (``--until-ci``): the decision rule on constructed studies (where seeds go,
what stops it), bad values refused in one line, and real tiny studies on digits: the rounds
recorded in the store, the report's section and status, a kill in the sequential phase resumed
without repeating a run, and two workers sharing one sequential study. Tests wait for rows in
the store, never for a sleep."""

from __future__ import annotations

import json
import os
import signal
import sqlite3

import numpy as np
import pandas as pd
import pytest

from analysis.sequential import BUDGET, CAP, MET, MORE, Target, compute_saved, plan_next
from tests.conftest import LONG_RUNS, TINY_STUDY, run_subprocess
from tests.test_reliability import _poll, _start

N_TEST = 500


def _accuracies(seed: int = 0, seeds: int = 12) -> dict[tuple[str, int], np.ndarray]:
    """Two arms at two sizes: at 100 images a close pair whose difference is noisy from seed to
    seed, at 200 a clearly separated pair whose difference is consistent."""
    rng = np.random.default_rng(seed)
    luck = rng.normal(0, 0.004, seeds)  # a seed's luck, shared by both arms
    return {
        ("a", 100): 0.70 + luck + rng.normal(0, 0.004, seeds),
        ("b", 100): 0.70 + luck + rng.normal(0, 0.03, seeds),
        ("a", 200): 0.90 + luck + rng.normal(0, 0.003, seeds),
        ("b", 200): 0.75 + luck + rng.normal(0, 0.003, seeds),
    }


def _runs(acc: dict, seeds: dict, seconds: float = 1.0) -> pd.DataFrame:
    """The finished runs a study with ``seeds`` per (arm, size) holds, as the loader gives them."""
    rows = [
        {
            "run_id": len(acc) * 100 + i,
            "arm": arm,
            "model": arm,
            "size_kind": "per_class",
            "size_value": float(n / 10),
            "fraction": n / 200,
            "n_train": n,
            "seed": s,
            "status": "done",
            "test_acc": float(acc[(arm, n)][s]),
            "train_seconds": seconds,
        }
        for i, ((arm, n), k) in enumerate(seeds.items())
        for s in range(k)
    ]
    return pd.DataFrame(rows)


def _run_sequence(target: Target, seconds: float = 1.0) -> tuple[dict, list]:
    """Apply the rule until it stops, as the study does; (seeds per cell, the plans)."""
    acc = _accuracies()
    seeds = {cell: 3 for cell in acc}
    plans = []
    while True:
        plan = plan_next(_runs(acc, seeds, seconds), target, N_TEST)
        plans.append(plan)
        if plan.reason != MORE:
            return seeds, plans
        for arm, _, value, seed in plan.add:
            assert seed == seeds[(arm, int(value * 10))]  # a cell's next seed is the one after its last
            seeds[(arm, int(value * 10))] = seed + 1


def test_the_close_noisy_pair_gets_more_seeds_than_the_clearly_separated_pair():
    seeds, plans = _run_sequence(Target(width=0.02, max_seeds=12))
    assert plans[-1].reason == MET
    assert seeds[("a", 200)] == seeds[("b", 200)] == 3  # within ±2 points with the first 3 seeds
    assert seeds[("a", 100)] >= 6 and seeds[("b", 100)] >= 6  # the close pair needed more
    assert seeds[("a", 100)] == seeds[("b", 100)]  # a pair gets the same new seed on both arms
    final = plans[-1].intervals
    assert (final["half_width"] <= 0.02).all() and set(final["kind"]) == {"accuracy", "difference"}


def test_the_widest_interval_against_the_target_is_served_first():
    acc = _accuracies()
    plan = plan_next(_runs(acc, {cell: 3 for cell in acc}), Target(width=0.02), N_TEST)
    assert plan.reason == MORE and plan.short.iloc[0]["n_train"] == 100
    assert sorted(plan.add) == [("a", "per_class", 10.0, 3), ("b", "per_class", 10.0, 3)]


def test_the_seed_cap_stops_it():
    seeds, plans = _run_sequence(Target(width=0.005, max_seeds=5))
    assert plans[-1].reason == CAP and max(seeds.values()) == 5
    assert plans[-1].intervals["capped"].any() and not plans[-1].add


def test_the_time_budget_stops_it_after_what_fits():
    # 12 runs of a minute each are done; the budget leaves room for 2 more: the widest demand's.
    target = Target(width=0.02, max_seeds=12, budget_hours=14 / 60)
    seeds, plans = _run_sequence(target, seconds=60.0)
    assert [p.reason for p in plans] == [MORE, BUDGET]
    assert sum(seeds.values()) == 14 and seeds[("a", 100)] == seeds[("b", 100)] == 4
    assert plans[-1].spent_hours == pytest.approx(14 / 60)


def test_images_needed_asks_for_seeds_at_the_sizes_around_n_star():
    """One arm on a pow3 curve measured at 100-800 images reaches 80% between 400 and 800: with
    a relative target for images needed, those two sizes get the next seed, no other."""
    rng = np.random.default_rng(1)
    rows = [
        {"run_id": 10 * n + s, "arm": "a", "model": "a", "size_kind": "n_train", "size_value": float(n)}
        | {"fraction": n / 800, "n_train": n, "seed": s, "status": "done", "train_seconds": 1.0}
        | {"test_acc": 0.9 - 0.3 * (n / 100) ** -0.7 + rng.normal(0, 0.01)}
        for n in (100, 200, 400, 800)
        for s in range(3)
    ]
    plan = plan_next(pd.DataFrame(rows), Target(width=0.5, needed_width=0.05, targets=(0.8,)), N_TEST)
    assert plan.reason == MORE and sorted(plan.add) == [("a", "n_train", 400.0, 3), ("a", "n_train", 800.0, 3)]
    needed = plan.intervals[plan.intervals["kind"] == "needed"]
    assert needed["n_train"].tolist() == [400, 800] and needed["short"].all()


def test_what_it_saved_is_against_a_fixed_grid_at_the_largest_seed_count():
    acc = _accuracies()
    seeds = {("a", 100): 6, ("b", 100): 6, ("a", 200): 3, ("b", 200): 3}
    saved = compute_saved(_runs(acc, seeds, seconds=2.0))
    assert (saved["runs"], saved["largest_seeds"], saved["fixed_runs"]) == (18, 6, 24)
    assert saved["ratio"] == pytest.approx(18 / 24)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--until-ci", "-1"], "sequential.until_ci=-1.0 is invalid"),
        (["--until-ci", "two"], "sequential.until_ci='two' is not a number"),
        (["--until-ci", "0.02"], "sequential.until_ci=0.02 is invalid; give a half-width in accuracy points"),
        (["--until-ci", "2", "--max-seeds", "1"], "sequential.max_seeds=1 is invalid"),
        (["--until-ci", "2", "--seeds", "5", "--max-seeds", "4"], "sequential.max_seeds=4 is below seeds=5"),
        (["--until-ci", "2", "--seeds", "2"], "seeds=2 is too few to start --until-ci"),
        (["--until-ci", "2", "--budget-hours", "-3"], "sequential.budget_hours=-3.0 is invalid"),
        (["--until-ci", "2", "--budget-hours", "inf"], "sequential.budget_hours=inf is invalid"),
    ],
)
def test_bad_sequential_values_are_refused_in_one_line(cli, tmp_path, args, fragment):
    code, _, err = cli("run", "--out", tmp_path / "out", *TINY_STUDY, *args)
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "out").exists()  # refused before anything is written


# -- real studies on digits --------------------------------------------------------------------

SEQUENTIAL = [*TINY_STUDY, "--quiet", "--no-costs", "--no-deploy", "--jobs", "1"]
SEQUENTIAL += ["--fractions", "0.5,1.0", "--seeds", "3"]


@pytest.mark.slow  # three rounds of runs and reports (~10 s on 2 cores)
def test_a_sequential_study_adds_seeds_in_rounds_and_says_why_it_stopped(cli, tmp_path):
    """One arm, two sizes, a target no 3-seed interval meets: each round adds one seed to both
    sizes until the cap; the report and status say so."""
    code, out, err = cli("run", "--out", tmp_path, *SEQUENTIAL, "--until-ci", "0.1", "--max-seeds", "4")
    assert code == 0 and "8 done, 0 failed, 0 left" in out, err
    db = sqlite3.connect(tmp_path / "study.db")
    rounds = db.execute("select round, reason, added from sequential_rounds order by round").fetchall()
    assert [(r, reason) for r, reason, _ in rounds] == [(1, MORE), (2, CAP)]
    assert sorted(json.loads(rounds[0][2])) == ["test_resnet|fraction=0.5|seed=3", "test_resnet|fraction=1|seed=3"]
    assert db.execute("select count(*), max(attempts) from runs where status = 'done'").fetchone() == (8, 1)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Sequential seeds" in report and "Stopped at the seed cap" in report
    assert pd.read_csv(tmp_path / "report" / "sequential_seeds.csv")["seeds"].tolist() == [4, 4]
    code, out, _ = cli("run", "--out", tmp_path, *SEQUENTIAL, "--until-ci", "0.1", "--max-seeds", "4", "--no-report")
    assert code == 0 and db.execute("select count(*) from sequential_rounds").fetchone() == (2,)  # resumed: no new row
    code, status, _ = cli("status", "--out", tmp_path)
    assert code == 0 and "sequential: target ±0.1 points, at most 4 seeds per cell" in status
    assert "(at the seed cap)" in status and "stopped (round 2): seed cap" in status


@pytest.mark.slow
def test_a_kill_in_the_sequential_phase_resumes_the_same_plan_without_repeating_a_run(tmp_path):
    slow = [
        *LONG_RUNS,
        "--heartbeat",
        "0.5",
        "--grace-period",
        "3",
    ]
    args = ["run", "--out", tmp_path, *SEQUENTIAL, "--fractions", "1.0", *slow, "--no-report"]
    args += ["--until-ci", "0.1", "--max-seeds", "5"]
    db_path = tmp_path / "study.db"
    proc = _start(*args)
    _poll(db_path, "select name from workers where doing like 'run %seed=3: epoch 1/8,%'")
    with sqlite3.connect(db_path) as db:
        done_before = dict(db.execute("select cell_key, finished_at from runs where status = 'done'").fetchall())
        rounds_before = db.execute("select round, reason, added from sequential_rounds").fetchall()
    os.killpg(proc.pid, signal.SIGKILL)  # no clean stop: the run stays held by a dead process
    proc.communicate(timeout=60)
    assert len(done_before) == 3 and rounds_before == [(1, MORE, '["test_resnet|fraction=1|seed=3"]')]
    status = run_subprocess("status", "--out", tmp_path).stdout  # the plan, as the killed study left it
    assert "scheduled next (round 1): 1 run(s) still to run\n    test_resnet|fraction=1|seed=3" in status

    resumed = run_subprocess(*args)
    assert resumed.returncode == 0 and "5 done, 0 failed, 0 left" in resumed.stdout, resumed.stderr
    db = sqlite3.connect(db_path)
    rows = db.execute("select cell_key, finished_at, attempts from runs").fetchall()
    assert len(rows) == 5 and len({k for k, _, _ in rows}) == 5
    assert {k: f for k, f, _ in rows if k in done_before} == done_before  # finished runs were not redone
    assert {k: a for k, _, a in rows}["test_resnet|fraction=1|seed=3"] == 2  # the killed run, taken over
    rounds = db.execute("select round, reason, added from sequential_rounds order by round").fetchall()
    assert rounds[0] == rounds_before[0] and [r[1] for r in rounds] == [MORE, MORE, CAP]
    assert db.execute("select count(*), count(distinct run_id) from epochs").fetchone()[1] == 5


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.distributed)])
def test_two_workers_share_a_sequential_study(tmp_path, request, backend):
    """A `study run` and a `study worker` on one store (SQLite's flock, PostgreSQL's advisory
    lock): each round is decided once, every run is done once, and the study stops once."""
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp_path / 'study.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    args = [
        "run",
        "--out",
        tmp_path,
        "--storage",
        url,
        *SEQUENTIAL,
        "--budget",
        "fixed",
        "--no-budget-control",
        "--epochs",
        "3",
        "--min-steps",
        "60",
    ]
    args += ["--until-ci", "0.1", "--max-seeds", "5", "--no-report"]
    runner = _start(*args)
    worker = _start("worker", "--out", tmp_path, "--storage", url, "--jobs", "1", "--threads", "1", "--wait", "120")
    for proc in (runner, worker):
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0 and "10 done, 0 failed, 0 left" in out, err
    engine = create_engine(url)
    with engine.connect() as db:
        done = db.execute(text("select count(*), min(attempts), max(attempts) from runs where status = 'done'"))
        assert tuple(done.one()) == (10, 1, 1)
        rounds = db.execute(text("select round, reason, added from sequential_rounds order by round")).all()
        workers = db.execute(text("select name, runs_done from workers")).all()
    engine.dispose()
    assert [r[1] for r in rounds] == [MORE, MORE, CAP]  # one decision per round, one stop
    added = [key for r in rounds for key in (json.loads(r[2]) if isinstance(r[2], str) else r[2])]
    assert len(added) == len(set(added)) == 4
    assert len(workers) == 2 and sum(n for _, n in workers) == 10
