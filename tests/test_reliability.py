"""Reliability and security: passwords never shown, every check before any write, clean stops
on SIGINT and SIGTERM, write failures in one line, two commands sharing one study. Real
`python -m study` processes and real timm models on digits at 16 px; mocks only inject a fault
(a full disk). Tests wait for what they can observe in the store or on a pipe, never a sleep."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from sqlalchemy.engine import make_url

from study.masking import mask_urls, masked_url
from tests.conftest import LONG_RUNS, ROOT, TINY_STUDY, run_subprocess

TINY = [*TINY_STUDY, "--quiet"]
PASSWORD = "s3cret-Pw"


def test_a_url_is_shown_without_its_password():
    assert (
        masked_url(f"postgresql+psycopg://u:{PASSWORD}@db.example:5432/s")
        == "postgresql+psycopg://u:***@db.example:5432/s"
    )
    assert masked_url("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"  # nothing to hide
    text = f'connection to "postgresql://u:{PASSWORD}@h/db" failed; also redis://:{PASSWORD}@cache'
    assert PASSWORD not in mask_urls(text) and mask_urls(text).count("***") == 2


def test_a_password_is_masked_in_the_error_of_an_unreachable_store(cli, tmp_path):
    url = f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/db"
    code, out, err = cli("run", "--out", tmp_path, "--storage", url, *TINY, "--fractions", "1.0", "--seeds", "1")
    assert (
        code == 2 and err.count("\n") == 1 and "cannot open storage 'postgresql+psycopg://u:***@127.0.0.1:1/db'" in err
    )
    assert PASSWORD not in out + err
    for command in ("status", "report", "worker"):
        code, out, err = cli(command, "--out", tmp_path, "--storage", url)
        assert code == 2 and "u:***@" in err and PASSWORD not in out + err, command


@pytest.mark.distributed
@pytest.mark.slow  # a whole study and its report on PostgreSQL
def test_a_password_is_masked_in_status_the_workers_table_the_store_and_the_report(cli, postgres_url, tmp_path):
    """The throwaway server trusts every login, so a URL with a password opens it: a whole study
    is run and reported, and the password appears nowhere that is shown or stored."""
    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    code, out, err = cli("run", "--out", tmp_path, "--storage", url, *TINY, "--fractions", "1.0", "--seeds", "2")
    assert code == 0, err
    assert PASSWORD not in out + err
    code, status, err = cli("status", "--storage", url)
    assert code == 0 and f"({masked_url(url)})" in status and "***" in status and PASSWORD not in status + err
    assert "workers: " in status  # the workers table is printed, with the password nowhere
    report = tmp_path / "report"
    assert f"`{masked_url(url)}`" in (report / "report.md").read_text()
    assert all(PASSWORD not in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        stored = [
            str(row)
            for query in ("select config from dataset_studies", "select * from workers", "select error from runs")
            for row in conn.execute(text(query))
        ]
    engine.dispose()
    assert stored and all(PASSWORD not in row for row in stored)


def test_an_out_that_is_a_file_is_refused_in_one_line(cli, tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    for args in (["run", *TINY], ["worker"], ["report"]):
        code, _, err = cli(*args, "--out", a_file)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"--out '{a_file}' is a file" in err or "no study database" in err, err
    code, _, err = cli("run", *TINY, "--out", a_file / "inside")
    assert code == 2 and "lies under the file" in err
    assert a_file.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_an_out_that_cannot_be_written_is_refused_before_anything_is_written(cli, tmp_path, monkeypatch):
    # Root may write anywhere, so the refusal the kernel would give another user is injected.
    folder = tmp_path / "locked"
    folder.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != folder)
    code, _, err = cli("run", *TINY, "--out", folder / "study")
    assert code == 2 and err.count("\n") == 1 and "is not writable" in err
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_refused_and_leaves_no_study_behind(cli, tmp_path):
    code, _, err = cli("run", "--out", tmp_path, *TINY, "--fractions", "1.0", "--seeds", "1", "--device", "cuda")
    assert code == 2 and err.count("\n") == 1 and "device='cuda'" in err
    assert not (tmp_path / "study.db").exists()  # no store, so no study that a later command would clash with
    # The next command in the same --out, with other settings, is not told of a study that was never run.
    code, out, err = cli(
        "run",
        "--out",
        tmp_path,
        *TINY,
        "--budget",
        "fixed",
        "--no-budget-control",
        "--epochs",
        "1",
        "--fractions",
        "1.0",
        "--seeds",
        "1",
    )
    assert code == 0 and "1 done, 0 failed, 0 left" in out, err


@pytest.mark.slow  # a study and three reports (~15 s on 2 cores)
def test_a_full_disk_while_writing_the_outputs_is_one_line_and_leaves_store_and_results_intact(
    cli, tmp_path, monkeypatch
):
    code, _, err = cli("run", "--out", tmp_path, *TINY, "--fractions", "0.5,1.0", "--seeds", "2", "--no-report")
    assert code == 0, err
    results = (tmp_path / "results.csv").read_bytes()
    db = sqlite3.connect(tmp_path / "study.db")
    runs_before = db.execute("select id, status, finished_at, test_acc from runs order by id").fetchall()

    def full_disk(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    code, out, err = cli("report", "--out", tmp_path)
    # Exit 1, not 2: the command and its input were valid; the machine failed it (2 is for bad input).
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "No space left on device" in err and "the store is intact" in err and "study report --out" in err
    assert (tmp_path / "results.csv").read_bytes() == results  # the old file, not half a new one
    assert db.execute("select id, status, finished_at, test_acc from runs order by id").fetchall() == runs_before
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)

    monkeypatch.undo()
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", full_disk)  # the disk fills up while the figures are drawn
    code, out, err = cli("report", "--out", tmp_path)
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err and ".png'" in err
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)

    monkeypatch.undo()  # space freed: the report is written from the store alone
    code, out, err = cli("report", "--out", tmp_path)
    assert code == 0 and (tmp_path / "report" / "index.html").is_file(), err


# -- clean stops ----------------------------------------------------------------------------------

# Runs of eight epochs of 40 steps: once a run's first epoch is stored, seven are left, far
# longer than it takes the test to see it and send the signal, on any machine.
SLOW = [
    *TINY,
    *LONG_RUNS,
    "--heartbeat",
    "0.5",
    "--grace-period",
    "3",
]
CELLS = ["--fractions", "0.5,1.0", "--seeds", "2"]  # 4 runs


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study", *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _poll(db_path: Path, query: str, deadline: float = 300) -> list[tuple]:
    """Rows of ``query`` once there are any (the store is polled: it is the event)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with sqlite3.connect(db_path) as db:
                rows = db.execute(query).fetchall()
        except sqlite3.OperationalError:  # not created yet
            rows = []
        if rows:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {query}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, jobs, to_group",
    [
        (signal.SIGINT, "2", True),  # Ctrl-C in a terminal: the whole process group, pool workers too
        (signal.SIGTERM, "2", False),  # `kill PID`: the main process only
        (signal.SIGTERM, "1", False),  # one worker, in the main process itself
    ],
)
def test_a_stopped_run_hands_its_runs_back_at_once_and_a_resume_does_each_run_once(tmp_path, signum, jobs, to_group):
    args = ["run", "--out", tmp_path, *SLOW, *CELLS, "--jobs", jobs, "--no-report"]
    db_path = tmp_path / "study.db"
    proc = _start(*args)
    _poll(db_path, "select name from workers where doing like 'run %: epoch 1/8,%'")
    # Every worker busy with a run: a pool worker is past its start-up, where it learns to leave
    # Ctrl-C to the main process (one still importing torch would die of it, with a traceback).
    _poll(db_path, f"select count(*) from workers where doing like 'run %' having count(*) >= {jobs}")
    with sqlite3.connect(db_path) as db:
        done_before = dict(db.execute("select id, finished_at from runs where status = 'done'").fetchall())
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=60)  # "within a few seconds" on a quiet machine; generous under load
    assert proc.returncode == 128 + signum, err
    (line,) = [line for line in err.splitlines() if line.startswith("study: stopped by")]
    assert f"stopped by {signal.Signals(signum).name}:" in line and "handed back to the store" in line
    assert f"resume with: python -m study run --out {tmp_path}" in line
    assert "Traceback" not in err and "leaked" not in err and "warning" not in err.lower()

    db = sqlite3.connect(db_path)
    rows = db.execute("select id, status, attempts, worker, finished_at from runs").fetchall()
    assert not [r for r in rows if r[1] == "running"]  # nothing left held: handed back, not waiting for a grace period
    assert all(r[2] == 0 and r[3] is None for r in rows if r[1] == "pending")  # the stop cost no attempt
    kept = {i: f for i, s, _, _, f in rows if s == "done"}
    assert done_before.items() <= kept.items()  # nothing finished was lost

    resumed = run_subprocess(*args)
    assert resumed.returncode == 0, resumed.stderr
    rows = db.execute("select id, status, attempts, finished_at from runs").fetchall()
    assert len(rows) == 4 and all(s == "done" and a == 1 for _, s, a, _ in rows)  # each run done once
    assert {i: f for i, _, _, f in rows if i in kept} == kept  # finished runs were not redone
    assert db.execute("select count(*), count(distinct run_id) from epochs").fetchone() == (32, 4)
    assert db.execute("select count(*) from predictions").fetchone()[0] == 4


@pytest.mark.slow
def test_a_stopped_study_worker_hands_its_run_to_the_command_still_running_at_once(tmp_path):
    """`study worker` joins a running `study run`; stopped by SIGTERM in the middle of a run, it
    hands that run back at once, and the other command does it (no grace period waited for:
    the grace period here is longer than the test allows)."""
    long_grace = [
        *TINY,
        *LONG_RUNS,
        "--heartbeat",
        "1",
        "--grace-period",
        "3600",
    ]
    db_path = tmp_path / "study.db"
    runner = _start("run", "--out", tmp_path, *long_grace, *CELLS, "--jobs", "1", "--no-report")
    _poll(db_path, "select name from workers where doing like 'run %: epoch 1/8,%'")
    (main_worker,) = _poll(db_path, "select name from workers")[0]
    worker = _start("worker", "--out", tmp_path, "--jobs", "1", "--threads", "1", "--quiet")
    ((run_id,),) = _poll(
        db_path,
        f"select r.id from runs r join workers w on w.name = r.worker where r.status = 'running'"
        f" and w.name != '{main_worker}' and w.doing like 'run %: epoch 1/8,%'",
    )
    os.kill(worker.pid, signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 143 and "1 run(s)" in err and "resume with: python -m study worker" in err, err
    with sqlite3.connect(db_path) as db:
        assert db.execute("select status, attempts from runs where id = ?", (run_id,)).fetchone() in (
            ("pending", 0),
            ("running", 1),  # already taken by the command still running
        )
    out, err = runner.communicate(timeout=600)
    assert runner.returncode == 0 and "4 done, 0 failed, 0 left" in out, err
    with sqlite3.connect(db_path) as db:
        assert db.execute(
            "select worker like ?, attempts from runs where id = ?", (f"{main_worker}%", run_id)
        ).fetchone() == (1, 1)
        assert db.execute("select count(*), max(attempts) from runs where status = 'done'").fetchone() == (4, 1)


@pytest.mark.slow
def test_a_stopped_worker_fails_its_trial_so_it_reruns_and_a_resume_spends_the_budget_once(tmp_path):
    import optuna

    args = ["run", "--out", tmp_path, *SLOW, "--fractions", "0.5", "--seeds", "1", "--trials", "3", "--jobs", "1"]
    args += ["--pruner", "none", "--no-report"]
    db_path = tmp_path / "study.db"
    proc = _start(*args)
    # A trial that has reported its first epoch: inside it, with seven epochs to go.
    ((trial_id,),) = _poll(
        db_path,
        "select t.trial_id from trials t where t.state = 'RUNNING'"
        " and exists (select 1 from trial_intermediate_values v where v.trial_id = t.trial_id)",
    )[:1]
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "1 trial(s) to rerun handed back" in err, err
    db = sqlite3.connect(db_path)
    assert db.execute("select state from trials where trial_id = ?", (trial_id,)).fetchone() == ("FAIL",)
    assert db.execute("select status, worker from tuning_jobs").fetchone() == ("pending", None)

    assert run_subprocess(*args).returncode == 0
    url = f"sqlite:///{db_path}"
    (name,) = optuna.get_all_study_names(url)
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    (failed,) = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    (rerun,) = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert len(complete) == 3 and rerun in complete and rerun.params == failed.params  # the budget, spent once
    assert db.execute("select status, attempts from runs").fetchall() == [("done", 1)]


# -- two commands, one --out ----------------------------------------------------------------------


@pytest.mark.slow
def test_two_run_commands_on_one_out_share_the_study_and_do_each_run_once(tmp_path):
    """Two terminals, the same command: both create-or-open the study, claim runs from it, and
    write the report in turn; every run is done exactly once."""
    args = [
        "run",
        "--out",
        tmp_path,
        *TINY,
        "--budget",
        "fixed",
        "--no-budget-control",
        "--epochs",
        "3",
        "--min-steps",
        "60",
        "--fractions",
        "0.25,0.5,1.0",
    ]
    args += ["--seeds", "2", "--jobs", "1"]
    first, second = _start(*args), _start(*args)
    for proc in (first, second):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "6 done, 0 failed, 0 left" in out and "Traceback" not in err
    db = sqlite3.connect(tmp_path / "study.db")
    assert db.execute("select count(*) from dataset_studies").fetchone() == (1,)
    assert db.execute("select count(*), min(attempts), max(attempts) from runs where status = 'done'").fetchone() == (
        6,
        1,
        1,
    )
    assert db.execute("select count(*), count(distinct run_id) from epochs").fetchone() == (18, 6)
    workers = db.execute("select name, runs_done from workers").fetchall()
    assert sum(n for _, n in workers) == 6  # the runs, split between the two commands' workers
    assert (tmp_path / "report" / "index.html").is_file() and len(pd.read_csv(tmp_path / "results.csv")) == 6


def test_the_first_signal_raises_stopped_and_a_second_exits_at_once():
    script = (
        "import os, signal\n"
        "from study.stopping import Stopped, stop_on_signals\n"
        "with stop_on_signals():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        while True: pass\n"
        "    except Stopped as stop:\n"
        "        print('first', stop, stop.exit_status, flush=True)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        while True: pass  # handing back, when the second signal comes\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout == "first SIGTERM 143\n" and proc.returncode == 130
    assert proc.stderr == "study: stopped at once; the next command takes back what was in flight\n"
