"""Many workers, one study: worker processes on a real PostgreSQL server (tests marked
`distributed`), and a dask cluster. Real `python -m study` processes, real timm models on
scikit-learn's digits at 16 px, one torch thread each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import FAST_MODEL, LONG_RUNS, ROOT, TINY_STUDY, run_subprocess

# Heartbeats every half second, taken over after 3 s of silence: a kill is noticed quickly.
SMALL = [
    *TINY_STUDY,
    "--heartbeat",
    "0.5",
    "--grace-period",
    "3",
    # The layout is fixed: "auto" decides it by timing, which a loaded machine can tip either way,
    # and the three-workers test compares scores with a study run alone.
    "--channels-last",
    "off",
    "--quiet",
]
CELLS = ["--fractions", "0.25,0.5,1.0", "--seeds", "2"]  # 6 runs


def _start(*args: str, host: str | None = None) -> subprocess.Popen:
    """A `python -m study` process in its own process group; ``host`` poses as another machine."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"STUDY_WORKER_HOST": host} if host else {})}
    return subprocess.Popen(
        [sys.executable, "-m", "study", *map(str, args)],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def _runs(url: str, name: str) -> dict[str, dict]:
    """Every run of study ``name``, by cell, with its epoch and prediction counts."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = (
            conn.execute(
                text(
                    "select r.cell_key, r.status, r.test_acc, r.attempts, r.worker, r.id,"
                    " (select count(*) from epochs e where e.run_id = r.id) as n_epochs,"
                    " (select count(*) from predictions p where p.run_id = r.id) as n_predictions"
                    " from runs r join dataset_studies s on s.id = r.study_id where s.name = :name"
                ),
                {"name": name},
            )
            .mappings()
            .all()
        )
    engine.dispose()
    return {r["cell_key"]: dict(r) for r in rows}


def _wait_for(url: str, query: str, deadline: float = 240):
    engine = create_engine(url)
    try:
        end = time.time() + deadline
        while time.time() < end:
            with engine.connect() as conn:
                try:
                    row = conn.execute(text(query)).first()
                except Exception:  # the tables do not exist yet
                    row = None
            if row is not None:
                return row
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for: {query}")
    finally:
        engine.dispose()


@pytest.mark.distributed
@pytest.mark.slow
def test_three_workers_on_postgres_finish_every_run_once_as_one_worker_would(postgres_url, tmp_path):
    """Three processes start at once on a fresh database (they race to create the tables and the
    study); together they do every run exactly once, with the results one worker gets alone."""
    procs = [
        _start(
            "run", "--storage", postgres_url, "--out", tmp_path / f"w{i}", *SMALL, *CELLS, "--jobs", "1", "--no-report"
        )
        for i in range(3)
    ]
    for proc in procs:
        _finish(proc)
    shared = _runs(postgres_url, "default")
    assert len(shared) == 6 and {r["status"] for r in shared.values()} == {"done"}
    assert all(
        r["attempts"] == 1 and r["n_epochs"] == 2 and r["n_predictions"] == 1 for r in shared.values()
    )  # each run once
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        workers = conn.execute(text("select name, runs_done from workers")).all()
    engine.dispose()
    # Each worker's tally matches the runs it finished. How many of the three took runs depends on how
    # fast each process starts (a late one may find nothing left), so that is not asserted.
    by_worker = {w: sum(r["worker"] == w for r in shared.values()) for w in {r["worker"] for r in shared.values()}}
    assert 1 <= len(workers) <= 3 and {w: n for w, n in workers if n} == by_worker

    alone = run_subprocess("run", "--out", tmp_path / "alone", *SMALL, *CELLS, "--jobs", "1", "--no-report")
    assert alone.returncode == 0, alone.stderr
    single = _runs(f"sqlite:///{tmp_path / 'alone' / 'study.db'}", "default")
    assert set(single) == set(shared)
    # One thread per worker on a CPU: training is deterministic, so the same seeds score the same.
    assert {k: r["test_acc"] for k, r in single.items()} == {k: r["test_acc"] for k, r in shared.items()}


@pytest.mark.distributed
@pytest.mark.slow
def test_a_worker_killed_midway_leaves_its_run_to_a_worker_on_another_machine(postgres_url, tmp_path):
    """Worker A ("machine-a") is killed with SIGKILL while it trains; `study worker` on
    "machine-b", which knows the study only from the store, finishes the rest and, once A's
    heartbeats have been silent for the grace period, A's run too."""
    # Eight epochs of 40 steps a run: killed once its first epoch is reported, the run has seven
    # epochs left, many times longer than the store's poll, so the kill lands inside it on any machine.
    a = _start(
        "run",
        "--storage",
        postgres_url,
        "--out",
        tmp_path / "a",
        *SMALL,
        *LONG_RUNS,
        *CELLS,
        "--jobs",
        "1",
        "--no-report",
        host="machine-a",
    )
    (held_id,) = _wait_for(
        postgres_url,
        "select r.id from runs r join workers w on w.name = r.worker where r.status = 'running'"
        " and r.worker like 'machine-a:%' and w.doing like 'run %: epoch 1/8,%'",
    )
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()

    b = _start("worker", "--storage", postgres_url, "--study", "default", "--out", tmp_path / "b", host="machine-b")
    out = _finish(b)
    assert "6 done, 0 failed, 0 left" in out
    runs = _runs(postgres_url, "default")
    assert len(runs) == 6 and all(
        r["status"] == "done" and r["n_epochs"] == 8 and r["n_predictions"] == 1 for r in runs.values()
    )
    (taken_over,) = [r for r in runs.values() if r["id"] == held_id]
    assert taken_over["attempts"] == 2 and taken_over["worker"].startswith("machine-b:")

    status = run_subprocess("status", "--storage", postgres_url)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert "  done     6" in lines
    (a_line,) = [line for line in lines if line.startswith("  machine-a:")]
    b_lines = [line for line in lines if line.startswith("  machine-b:")]  # its loky worker processes
    assert "presumed dead" in a_line and b_lines and all("idle: nothing left to do" in line for line in b_lines)


def test_a_dask_cluster_of_two_workers_runs_a_study(cli, tmp_path):
    """`--backend dask`: joblib's dask backend sends the tasks to a LocalCluster of two
    single-thread workers; the store keeps the books."""
    distributed = pytest.importorskip("distributed")
    import torch

    threads = torch.get_num_threads()
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        code, out, err = cli(
            "run",
            "--out",
            tmp_path,
            *SMALL,
            "--fractions",
            "0.5,1.0",
            "--seeds",
            "2",
            "--backend",
            "dask",
            "--scheduler",
            cluster.scheduler_address,
            "--no-report",
        )
    torch.set_num_threads(threads)
    assert code == 0, err
    assert "4 done, 0 failed, 0 left" in out
    runs = _runs(f"sqlite:///{tmp_path / 'study.db'}", "default")
    assert len(runs) == 4 and all(
        r["status"] == "done" and r["attempts"] == 1 and r["n_epochs"] == 2 for r in runs.values()
    )
    assert len({r["worker"] for r in runs.values()}) == 2  # both dask workers (threads of this process) took runs


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--backend", "ray"], "backend='ray' is unknown; valid: loky, dask"),
        (["--backend", "dask"], "backend='dask' needs the scheduler's address"),
        (["--scheduler", "tcp://127.0.0.1:1"], "scheduler='tcp://127.0.0.1:1' only applies to backend='dask'"),
        (["--grace-period", "1", "--heartbeat", "2"], "grace_period=1.0 is invalid"),
    ],
)
def test_bad_backend_values_are_refused_in_one_line(cli, tmp_path, args, fragment):
    code, _, err = cli("run", "--out", tmp_path, "--models", FAST_MODEL, *args)
    assert code == 2 and err.count("\n") == 1 and fragment in err and "Traceback" not in err


def test_an_unreachable_scheduler_is_refused_in_one_line(cli, tmp_path):
    pytest.importorskip("distributed")
    code, _, err = cli(
        "run",
        "--out",
        tmp_path,
        "--models",
        FAST_MODEL,
        "--image-size",
        "16",
        "--fractions",
        "1.0",
        "--seeds",
        "1",
        "--backend",
        "dask",
        "--scheduler",
        "tcp://127.0.0.1:9",
        "--quiet",
        "--no-report",
    )
    assert code == 2 and err.count("\n") == 1 and "cannot reach the dask scheduler at 'tcp://127.0.0.1:9'" in err


def test_a_worker_needs_a_study_to_join(cli, tmp_path):
    code, _, err = cli("worker", "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    assert code == 2 and "no study database at" in err
    assert cli("run", "--out", tmp_path, *SMALL, "--fractions", "1.0", "--seeds", "1", "--no-report")[0] == 0
    code, _, err = cli("worker", "--out", tmp_path, "--study", "other")
    assert code == 2 and "no study 'other' in" in err and "studies there: 'default'" in err


def test_a_worker_started_before_its_study_waits_for_it_with_wait(cli, tmp_path):
    """SLURM may start the workers before `study run` has created the study: with --wait they
    poll the store for it instead of exiting, then share its runs."""
    worker = _start("worker", "--out", tmp_path, "--wait", "120", "--jobs", "1", "--threads", "1", "--quiet")
    assert worker.stderr.readline().startswith("study: waiting up to 120 s for a study in sqlite:///")
    assert worker.poll() is None  # it said it waits (no database yet), and it does
    assert (
        cli("run", "--out", tmp_path, *SMALL, "--fractions", "0.5,1.0", "--seeds", "3", "--jobs", "1", "--no-report")[0]
        == 0
    )
    out = _finish(worker, timeout=120)
    assert "study 'default': 6 done, 0 failed, 0 left" in out  # it joined and stayed until nothing was left
    engine = create_engine(f"sqlite:///{tmp_path / 'study.db'}")
    with engine.connect() as db:
        assert db.execute(text("select count(*), max(attempts) from runs where status = 'done'")).one() == (6, 1)


@pytest.mark.distributed
@pytest.mark.slow
def test_workers_tune_one_cell_together_and_a_dead_workers_trial_is_failed_and_retried(postgres_url, tmp_path):
    """Two machines tune one (model, fraction) through Optuna's storage on PostgreSQL. Machine A
    stops inside a trial (frozen, then killed); its heartbeats stop, B fails that trial after the
    grace period, runs it again with the same parameters, and finishes the budget and the final run."""
    import optuna

    toml = tmp_path / "tune.toml"
    toml.write_text(
        '[tune]\npruner = "none"\nstartup_trials = 2\nlr = [1e-3, 3e-2]\n'
        "augment = []\naugment_strength = []\nnormalization = []\nweight_decay = []\n"
    )
    args = [
        "--storage",
        postgres_url,
        *SMALL,
        "--min-steps",
        "30",
        "--fractions",
        "0.25",
        "--seeds",
        "1",
        "--trials",
        "8",
        "--jobs",
        "1",
    ]
    running = (
        "select t.number from trials t join trial_user_attributes u on u.trial_id = t.trial_id"
        " where t.state = 'RUNNING' and u.key = 'worker' and u.value_json like '\"{}:%'"
    )
    a = _start("run", "--config", toml, "--out", tmp_path / "a", *args, "--no-report", host="machine-a")
    (a_trial,) = _wait_for(
        postgres_url,
        running.format("machine-a")  # A tunes the cell, its trial's parameters drawn...
        + " and exists (select 1 from trial_params p where p.trial_id = t.trial_id)",
    )
    # ...and is frozen there: it can neither finish that trial nor spend the budget while B starts,
    # however fast or slow this machine is.
    os.killpg(a.pid, signal.SIGSTOP)
    b = _start("run", "--config", toml, "--out", tmp_path / "b", *args, "--no-report", host="machine-b")
    _wait_for(postgres_url, running.format("machine-b"))  # B has joined the cell while A's trial is open
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    assert "1 done, 0 failed, 0 left" in _finish(b, timeout=500)

    (name,) = optuna.get_all_study_names(postgres_url)
    study = optuna.load_study(study_name=name, storage=postgres_url)
    trials = study.get_trials()
    assert {t.user_attrs["worker"].split(":")[0] for t in trials} == {
        "machine-a",
        "machine-b",
    }  # one Optuna study, two machines
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= 8
    (dead,) = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert dead.number == a_trial and dead.user_attrs["worker"].startswith("machine-a:")  # failed once silent...
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == a_trial]  # ...and run again
    assert (
        retry.state == optuna.trial.TrialState.COMPLETE
        and retry.params == dead.params
        and retry.user_attrs["worker"].startswith("machine-b:")
    )
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        job_status = conn.execute(text("select status from tuning_jobs")).scalar()
        source = conn.execute(text("select hparams_source from runs")).scalar()
    engine.dispose()
    assert job_status == "done" and source == f"tuned:{name}#{study.user_attrs['chosen_trial']}"
