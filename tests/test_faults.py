"""Faults: runs that raise, worker processes that die. The study records what happened and goes
on; nothing finished is lost. Real training on digits at 16 px; mocks only inject the fault."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import torch

import study.train
from study.execute import run_next
from tests.conftest import TINY_STUDY

SMALL = [*TINY_STUDY, "--quiet", "--no-report"]


def test_runs_that_raise_are_recorded_failed_the_study_goes_on_and_retry_failed_reruns_them(cli, tmp_path, monkeypatch):
    real_train_run = study.train.train_run

    def faulty(data, train_idx, val_idx, test_idx, model, hp, seed, device, **kw):
        if seed == 1 and len(train_idx) < 300:  # the small fraction's second seed: the GPU runs out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if (
            seed == 2 and len(train_idx) < 300
        ):  # its third seed: a learning rate that makes the loss NaN (a real divergence)
            hp = hp.__class__(**{**hp.__dict__, "lr": 1e6})
        return real_train_run(data, train_idx, val_idx, test_idx, model, hp, seed, device, **kw)

    monkeypatch.setattr(study.train, "train_run", faulty)
    args = ["run", "--out", tmp_path, *SMALL, "--fractions", "0.25,1.0", "--seeds", "3", "--jobs", "1"]
    code, out, err = cli(*args)
    assert code == 1 and "Traceback" not in err
    assert "4 done, 2 failed, 0 left" in out  # the study went on past both failures
    db = sqlite3.connect(tmp_path / "study.db")
    failed = dict(db.execute("select seed, error from runs where status = 'failed'").fetchall())
    assert failed[1].startswith("OutOfMemoryError: CUDA out of memory") and failed[2].startswith(
        "DivergedError: training loss became nan"
    )
    done_before = dict(db.execute("select id, finished_at from runs where status = 'done'").fetchall())
    code, status, _ = cli("status", "--out", tmp_path)
    assert "failed   2" in status and "OutOfMemoryError: CUDA out of memory" in status

    monkeypatch.setattr(study.train, "train_run", real_train_run)  # the memory and the learning rate are fixed
    assert cli(*args)[0] == 1  # without --retry-failed, failed runs stay failed
    code, out, _ = cli(*args, "--retry-failed")
    assert code == 0 and "6 done, 0 failed, 0 left" in out
    rows = db.execute("select id, status, attempts, finished_at, error from runs").fetchall()
    assert all(status == "done" and error is None for _, status, _, _, error in rows)
    assert {i: f for i, _, _, f, _ in rows if i in done_before} == done_before  # finished runs were not redone
    assert sorted(a for i, _, a, _, _ in rows if i not in done_before) == [1, 1]  # retried with fresh attempts
    assert db.execute("select count(*) from epochs").fetchone()[0] == 12 and db.execute(
        "pragma integrity_check"
    ).fetchone() == ("ok",)


def dies_in_its_first_run(cfg, threads=0, show_epochs=False, epoch_queue=None):
    """``run_next`` for a loky worker process, except that the first worker to get here is
    killed (as the kernel's OOM killer would) in the middle of its run."""
    marker = Path(cfg.out) / "died"
    if not marker.exists():
        marker.touch()
        study.train.train_run = lambda *a, **k: os._exit(137)  # in this process only, which is about to die
    return run_next(cfg, threads, show_epochs, epoch_queue)


@pytest.mark.slow  # loky's worker processes start twice (torch imported, data opened): ~25 s
def test_a_worker_process_that_dies_gives_its_run_back(cli, tmp_path, monkeypatch):
    import study.execute

    monkeypatch.setattr(study.execute, "run_next", dies_in_its_first_run)
    code, out, err = cli("run", "--out", tmp_path, *SMALL, "--fractions", "0.5,1.0", "--seeds", "2", "--jobs", "2")
    assert code == 0, err
    assert "a worker process died (killed, or out of memory); its run goes back to the queue" in out
    assert "4 done, 0 failed, 0 left" in out
    db = sqlite3.connect(tmp_path / "study.db")
    attempts = [a for (a,) in db.execute("select attempts from runs where status = 'done'")]
    # The killed run was claimed again and finished. Loky stops the whole pool when one process
    # dies, so the run may have had one more attempt: claimed by the other process before it
    # was stopped too.
    assert len(attempts) == 4 and 2 <= max(attempts) <= 3
    assert db.execute("select count(*) from epochs").fetchone()[0] == 8 and db.execute(
        "pragma integrity_check"
    ).fetchone() == ("ok",)
