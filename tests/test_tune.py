"""Optuna tuning: real Optuna studies in the study's real SQLite database, real timm models on
scikit-learn's digits at 16 px."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import optuna
import pytest
import torch

from analysis.tuning import BEST_COLUMNS, IMPORTANCE_COLUMNS, TRIAL_COLUMNS, tuning_tables
from study import config
from study.config import DataConfig, StudyConfig, TrainConfig, TuneConfig
from study.errors import UserError
from study.store import DONE, PENDING, RUNNING, Cell, Store, TuningJobRow, tuning_study_name
from study.tune import make_sampler, optuna_storage, suggest, tune_cell
from tests.conftest import FAST_MODEL, ROOT, TINY_STUDY, run_subprocess, silence

SMALL = [*TINY_STUDY, "--quiet"]


def _toml(tmp_path, text: str):
    path = tmp_path / "tune.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Digits at 16 px on the CPU, with a training subset, for tuning one cell directly."""
    from study.plan import load_data
    from study.splits import training_subset
    from study.train import TrainData

    cfg = StudyConfig(out=str(tmp_path_factory.mktemp("digits")), data=DataConfig(image_size=16))
    dataset, splits, _ = load_data(cfg)
    data = TrainData.from_arrays(
        np.array(dataset.images), dataset.labels, dataset.num_classes, torch.device("cpu"), dataset.hflip
    )
    idx = training_subset(splits, dataset.labels, "fraction", 0.5, 0, 2, dataset.class_names)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a study's workers do: tiny models, and cores shared with others
    yield data, idx, splits.val
    torch.set_num_threads(threads)


def _train_fn(digits):
    from study.train import train_run

    data, idx, val = digits
    return lambda hp, on_epoch: train_run(
        data, idx, val, val, FAST_MODEL, hp, 0, torch.device("cpu"), on_epoch=on_epoch
    )


@pytest.mark.slow  # a tuning study and its final runs (~11 s on 2 cores)
def test_tuning_beats_a_bad_default_and_final_runs_use_the_best_trial(cli, digits, tmp_path):
    """A study whose [train] learning rate is deliberately bad, tuned with 3 trials per cell over
    two fractions by two parallel workers."""
    from study.train import train_run

    data, idx, val = digits  # fraction 0.5 of seed 0: the subset the 0.5 cell is tuned on
    bad = TrainConfig(budget="fixed", epochs=2, min_steps=20, lr=1e-6)
    untuned_val = train_run(data, idx, val, val, FAST_MODEL, bad, 0, torch.device("cpu")).val_acc
    assert untuned_val < 0.2  # lr=1e-6 barely moves from chance

    out = tmp_path / "o"
    base = [*SMALL, "--out", out, "--lr", "1e-6", "--min-steps", "20", "--no-report"]
    space = (
        '[tune]\nlr = [3e-3, 3e-2]\naugment = ["none", "light"]\nnormalization = ["model"]\naugment_strength = '
        "[]\nstartup_trials = 2\n"
    )
    toml = _toml(tmp_path, space)
    code, out_text, err = cli(
        "run",
        *base,
        "--config",
        toml,
        "--fractions",
        "0.25,0.5",
        "--seeds",
        "2",
        "--name",
        "tuned",
        "--trials",
        "3",
        "--jobs",
        "2",
    )
    assert code == 0, (out_text, err)
    assert out_text.count("tuned tuned|tune|") == 2, out_text
    url = f"sqlite:///{out / 'study.db'}"
    db = sqlite3.connect(out / "study.db")

    storage = optuna_storage(url)
    for fraction in (0.25, 0.5):
        name = tuning_study_name("tuned", FAST_MODEL, "fraction", fraction)
        study = optuna.load_study(study_name=name, storage=storage)
        assert (
            study.user_attrs.items()
            >= {"study": "tuned", "model": FAST_MODEL, "size_kind": "fraction", "size_value": fraction}.items()
        )
        trials = study.get_trials()
        assert sorted(t.number for t in trials) == [
            0,
            1,
            2,
        ]  # the budget exactly, though both workers may tune one cell
        assert all(t.user_attrs["epochs_run"] >= 1 for t in trials)
        best = study.best_trial
        assert best.value > untuned_val + 0.2
        rows = db.execute(
            "select hparams, hparams_source, val_acc from runs r join dataset_studies s on r.study_id = s.id where "
            "s.name = 'tuned' and r.size_value = ?",
            (fraction,),
        ).fetchall()
        assert len(rows) == 2
        for hparams, source, val_acc in rows:  # every seed's final run uses the best trial's parameters
            assert source == f"tuned:{name}#{best.number}"
            hp = json.loads(hparams)
            assert hp["lr"] == best.params["lr"] and hp["augment"] == best.params["augment"]
            assert hp["normalization"] == "model" and hp["augment_strength"] == 1.0 and hp["epochs"] == 2
            assert val_acc > untuned_val
        # the final runs finished after their cell's tuning: they waited for it
        (tuned_at,) = db.execute("select finished_at from tuning_jobs where optuna_study = ?", (name,)).fetchone()
        assert all(
            f >= tuned_at
            for (f,) in db.execute(
                "select finished_at from runs where size_value = ? and hparams_source like 'tuned:%'", (fraction,)
            )
        )

    # Tuning on does not skip the costs: the model's are measured once, each final run's too.
    costs = db.execute(
        "select m.model, m.macs, m.latency_p50_ms_1t from model_costs m join dataset_studies s on m.study_id = s.id "
        "where s.name = 'tuned'"
    ).fetchall()
    assert [c[0] for c in costs] == [FAST_MODEL] and costs[0][1] > 0 and costs[0][2] > 0
    per_run = db.execute(
        "select images_per_second, peak_memory_mb from runs where hparams_source like 'tuned:%'"
    ).fetchall()
    assert len(per_run) == 4 and all(ips > 0 and mem > 0 for ips, mem in per_run)

    tables = tuning_tables(url, "tuned")
    assert list(tables.trials.columns[: len(TRIAL_COLUMNS)]) == TRIAL_COLUMNS
    assert {"param_lr", "param_weight_decay", "param_augment"} <= set(tables.trials.columns)
    assert len(tables.trials) == 6 and set(tables.trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert list(tables.best.columns[: len(BEST_COLUMNS)]) == BEST_COLUMNS and len(tables.best) == 2
    assert (tables.best["n_trials"] == 3).all() and (tables.best["n_complete"] + tables.best["n_pruned"] == 3).all()
    assert list(tables.importances.columns) == IMPORTANCE_COLUMNS
    assert tuning_tables(url, "other").best.empty  # Optuna studies belong to their study by user attribute

    code, status, _ = cli("status", "--out", out, "--name", "tuned")
    assert code == 0 and "tuning: 2 of 2 cells tuned (3 trials each)" in status and "best val_acc" in status
    code, _, _ = cli("report", "--out", out, "--name", "tuned")
    report = (out / "report" / "report.md").read_text()
    assert (
        code == 0
        and "6 Optuna trial(s) in 2 tuned (model, size) cell(s); 4 final run(s) used tuned hyper-parameters" in report
    )

    # a changed search space would mix results: refused, and nothing stored is touched
    other = _toml(tmp_path, space.replace("lr = [3e-3, 3e-2]", "lr = [1e-4, 1e-2]"))
    code, _, err = cli(
        "run", *base, "--config", other, "--fractions", "0.25,0.5", "--seeds", "2", "--name", "tuned", "--trials", "3"
    )
    assert code == 2 and "was run with tune.lr=[0.003, 0.03], this config has tune.lr=[0.0001, 0.01]" in err
    assert db.execute("select count(*) from runs where status = 'done'").fetchone()[0] == 4


def test_a_diverging_trial_is_pruned_and_the_study_goes_on(digits, tmp_path):
    storage = optuna_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    tune = TuneConfig(
        trials=3, lr=[1e-3, 1e6], weight_decay=[], augment=[], augment_strength=[], normalization=[], startup_trials=5
    )
    optuna.create_study(study_name="cell", storage=storage, direction="maximize").enqueue_trial(
        {"lr": 1e6}
    )  # absurd: NaN loss
    study = tune_cell(
        "cell",
        storage,
        _train_fn(digits),
        TrainConfig(budget="fixed", epochs=2, min_steps=4, augment="none"),
        tune,
        {"study": "s"},
    )
    trials = study.get_trials()
    assert len(trials) == 3
    first = trials[0]
    assert first.params == {"lr": 1e6} and first.state == optuna.trial.TrialState.PRUNED
    assert "nan" in first.user_attrs["diverged"] and first.user_attrs["epochs_run"] == 1
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials[1:])
    assert study.user_attrs["study"] == "s"


def test_the_same_config_proposes_the_same_trials(digits, tmp_path):
    """Trial 0 is drawn at random, trial 1 by TPE from trial 0's result: both repeat exactly."""
    tune = TuneConfig(
        trials=2, startup_trials=1, lr=[1e-3, 3e-2], augment=["none", "strong"], normalization=["model", "half"]
    )
    hp = TrainConfig(budget="fixed", epochs=2, min_steps=4)
    runs = []
    for name in ("a", "b"):
        storage = optuna_storage(f"sqlite:///{tmp_path / name}.db")
        study = tune_cell("cell", storage, _train_fn(digits), hp, tune, {})
        runs.append([(t.params, t.value, t.state) for t in study.get_trials()])
    assert runs[0] == runs[1] and runs[0][0][0] != runs[0][1][0]
    other = optuna.create_study(sampler=make_sampler(replace(tune, seed=1), 0))
    assert suggest(other.ask(), tune) != runs[0][0][0]  # the seed matters


def test_hyperband_and_no_pruner_are_options(digits, tmp_path):
    tune = TuneConfig(
        trials=2,
        pruner="hyperband",
        lr=[1e-3, 3e-2],
        augment=[],
        augment_strength=[],
        normalization=[],
        weight_decay=[],
    )
    study = tune_cell(
        "cell",
        optuna_storage(f"sqlite:///{tmp_path / 'h.db'}"),
        _train_fn(digits),
        TrainConfig(budget="fixed", epochs=2, min_steps=4),
        tune,
        {},
    )
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner) and len(study.get_trials()) == 2
    assert all(t.intermediate_values for t in study.get_trials())  # validation accuracy reported each epoch


def test_the_timeout_ends_tuning_after_the_trial_that_crosses_it(digits, tmp_path):
    tune = TuneConfig(
        trials=5, timeout=1e-3, lr=[1e-3, 3e-2], augment=[], augment_strength=[], normalization=[], weight_decay=[]
    )
    study = tune_cell(
        "cell",
        optuna_storage(f"sqlite:///{tmp_path / 't.db'}"),
        _train_fn(digits),
        TrainConfig(budget="fixed", epochs=1, min_steps=2),
        tune,
        {},
    )
    assert len(study.get_trials()) == 1


def test_when_every_trial_diverges_the_cell_fails_and_its_runs_wait(cli, tmp_path):
    toml = _toml(tmp_path, "[tune]\nlr = [1e6, 1e6]\n")
    code, out, err = cli(
        "run",
        *SMALL,
        "--out",
        tmp_path,
        "--config",
        toml,
        "--fractions",
        "1.0",
        "--seeds",
        "1",
        "--trials",
        "2",
        "--budget",
        "fixed",
        "--no-budget-control",
        "--epochs",
        "1",
        "--no-report",
    )
    assert code == 1 and "Traceback" not in err
    assert "1 tuning job(s) failed" in out
    code, status, _ = cli("status", "--out", tmp_path)
    assert code == 0 and "left     1" in status
    assert (
        "failed   test_resnet fraction=1: 0 complete, 2 pruned, 0 failed of 2" in status
        and "no trial completed" in status
    )


@pytest.mark.slow
def test_a_killed_tuning_resumes_the_same_optuna_study_without_repeating_trials(tmp_path):
    out = tmp_path / "o"
    toml = _toml(tmp_path, '[tune]\npruner = "none"\n')
    args = [
        "run",
        "--out",
        out,
        "--config",
        toml,
        "--models",
        FAST_MODEL,
        "--image-size",
        "16",
        "--budget",
        "fixed",
        "--no-budget-control",
        "--epochs",
        "2",
        "--min-steps",
        "4",
        "--batch-size",
        "64",
        "--fractions",
        "0.5",
        "--seeds",
        "1",
        "--trials",
        "5",
        "--jobs",
        "2",
        "--quiet",
        "--no-report",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", *map(str, args)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db_path = out / "study.db"
    finished_before: list = []
    deadline = time.time() + 300
    while time.time() < deadline and len(finished_before) < 2:
        time.sleep(0.1)
        try:
            finished_before = (
                sqlite3.connect(db_path)
                .execute("select number, datetime_complete from trials where state = 'COMPLETE' order by number")
                .fetchall()
            )
        except sqlite3.OperationalError:  # the database or Optuna's tables do not exist yet
            continue
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(finished_before) < 5, "the kill should land midway"

    resumed = run_subprocess(*args)
    assert resumed.returncode == 0, resumed.stderr
    db = sqlite3.connect(db_path)
    assert db.execute("select count(*) from studies").fetchone()[0] == 1  # the same Optuna study
    trials = db.execute("select number, state, datetime_complete from trials order by number").fetchall()
    finished = [t for t in trials if t[1] == "COMPLETE"]
    assert len(finished) == 5
    kept = {n: done_at for n, state, done_at in trials}
    for number, done_at in finished_before:
        assert kept[number] == done_at  # trials finished before the kill were kept, not redone
    interrupted = [t for t in trials if t[1] == "FAIL"]
    assert len(trials) == 5 + len(interrupted) and len(interrupted) <= 2  # at most one in flight per worker
    # each interrupted trial was run again with its parameters (the first trials are random, so they differ)
    assert db.execute("select count(*) from trial_system_attributes where key = 'failed_trial'").fetchone()[0] == len(
        interrupted
    )
    (source,) = db.execute("select hparams_source from runs where status = 'done'").fetchone()
    assert source.startswith("tuned:default|tune|test_resnet|fraction=0.5#")


# -- the store's side: tuning jobs claimed like runs, and runs that wait for them --------------


def test_runs_wait_for_their_cells_tuning_and_several_workers_tune_one_cell(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    sid = store.open_study("s", "fp", {}, {}, {}, {}, np.array([0]))
    store.add_cells(sid, [(Cell("m", "fraction", f, 0), 10, f) for f in (0.5, 1.0)])
    jobs = [(tuning_study_name("s", "m", "fraction", f), "m", "fraction", f) for f in (0.5, 1.0)]
    assert store.add_tuning_jobs(sid, jobs) == 2 and store.add_tuning_jobs(sid, jobs) == 0
    assert store.claim(sid, "w:1") is None and store.waiting_on_tuning(sid)
    first, second = store.open_tuning_jobs(sid)
    assert first.size_value == 0.5  # smallest sizes first
    assert store.join_tuning(first.id, "w:1") and store.join_tuning(first.id, "w:2")  # one cell, two workers
    assert [j.status for j in store.open_tuning_jobs(sid)] == [RUNNING, PENDING]
    assert store.close_tuning(first.id, DONE) and not store.close_tuning(first.id, DONE)  # closed once
    assert not store.join_tuning(first.id, "w:3")  # a closed job takes no more workers
    run = store.claim(sid, "w:1")
    assert run.size_value == first.size_value and store.claim(sid, "w:1") is None  # the other cell still waits
    store.close_tuning(second.id, "failed", "boom")
    assert not store.waiting_on_tuning(sid)  # a failed tuning job does not keep workers waiting
    assert store.tuning_counts(sid) == {PENDING: 0, RUNNING: 0, DONE: 1, "failed": 1}
    assert store.retry_failed(sid) == 1 and [j.id for j in store.open_tuning_jobs(sid)] == [second.id]


@pytest.mark.filterwarnings(
    "ignore:Heartbeat of storage"
)  # the test asks for trials by hand, where workers use optimize
def test_a_silent_tuning_job_is_reopened_and_a_dead_workers_trial_is_retried(tmp_path):
    from study.store import worker_id
    from study.tune import budget_left, fail_dead_trials

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    sid = store.open_study("s", "fp", {}, {}, {}, {}, np.array([0]))
    store.add_tuning_jobs(sid, [("t", "m", "fraction", 1.0)])
    (job,) = store.open_tuning_jobs(sid)
    store.join_tuning(job.id, "elsewhere:1")
    assert store.release_stale(sid, grace_seconds=3600) == 0  # heard from just now
    silence(store, TuningJobRow, job.id, 60)
    assert store.release_stale(sid, grace_seconds=30) == 1 and store.tuning_counts(sid)[PENDING] == 1

    storage = optuna_storage(store.url, heartbeat=1, grace_period=2)
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    dead = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    dead.set_user_attr("worker", f"{worker_id().split(':')[0]}:999999999")  # a process of this host that is gone
    tune = TuneConfig(trials=1)
    assert budget_left(study, tune) == 0  # its running trial covers the budget...
    fail_dead_trials(study)  # ...until it is seen dead: failed, and enqueued again with its parameters
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING] and budget_left(study, tune) == 1
    assert study.get_trials()[1].params == dead.params and study.ask().number == 1  # the retry is taken first


def test_a_database_from_before_optuna_shared_it_keeps_its_studies(tmp_path):
    db_path = tmp_path / "old.db"
    store = Store(f"sqlite:///{db_path}")
    sid = store.open_study("old", "fp", {"a": 1}, {}, {}, {}, np.array([0]))
    store.add_cells(sid, [(Cell("m", "fraction", 1.0, 0), 10, 1.0)])
    store.engine.dispose()
    with sqlite3.connect(db_path) as db:  # the table name used before Optuna shared the database
        db.execute("alter table dataset_studies rename to studies")
    reopened = Store(f"sqlite:///{db_path}")
    assert reopened.study_names() == ["old"] and len(reopened.runs(sid)) == 1
    assert (
        "dataset_studies"
        in sqlite3.connect(db_path).execute("select sql from sqlite_master where name = 'runs'").fetchone()[0]
    )  # its foreign key followed
    optuna.create_study(study_name="t", storage=optuna_storage(reopened.url))  # Optuna gets its own "studies"


def test_untuned_study_has_empty_tuning_tables_with_the_documented_columns(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.open_study("s", "fp", {}, {}, {}, {}, np.array([0]))
    tables = tuning_tables(store.url, "s")
    assert list(tables.trials.columns) == TRIAL_COLUMNS and tables.trials.empty
    assert list(tables.best.columns) == BEST_COLUMNS and list(tables.importances.columns) == IMPORTANCE_COLUMNS
    assert "trials" not in {
        r[0] for r in sqlite3.connect(tmp_path / "s.db").execute("select name from sqlite_master")
    }  # read, never created


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"tune.trials": "-1"}, "tune.trials=-1 is invalid"),
        ({"tune.pruner": "asha"}, "tune.pruner='asha' is unknown; valid: median, hyperband, none"),
        ({"tune.lr": "0.1,0.001"}, "tune.lr=[0.1, 0.001] is invalid; use [low, high] with low <= high"),
        ({"tune.weight_decay": "0,0.1"}, "both positive numbers"),
        ({"tune.augment": "none,wild"}, "tune.augment choice 'wild' is unknown"),
        (
            {"tune.normalization": "zscore"},
            "tune.normalization choice 'zscore' is unknown; valid: model, imagenet, half",
        ),
    ],
)
def test_bad_tuning_settings_are_refused(overrides, fragment):
    with pytest.raises(UserError) as info:
        config.load(None, overrides)
    assert fragment in str(info.value)


def test_tuning_flags_reach_the_config(cli, tmp_path):
    code, _, err = cli("run", "--out", tmp_path, *SMALL, "--trials", "x")
    assert code == 2 and "tune.trials='x' is not a whole number" in err
    code, _, err = cli("run", "--out", tmp_path, *SMALL, "--pruner", "asha")
    assert code == 2 and "tune.pruner='asha' is unknown" in err
