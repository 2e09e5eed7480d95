"""The plateau budget (study/train.py, analysis/convergence.py): a run trains until validation
stops improving, under a cap; a capped run is not converged; the stop is the same on any worker
and after a kill and resume; the budget control rides on seed 0's runs; bad settings are refused.
Real timm models on scikit-learn's digits at 16 px."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from sqlalchemy import update
from synthetic import make_study

from analysis.convergence import cell_convergence, in_run_control, run_convergence
from analysis.load import load_study
from study.config import DataConfig, StudyConfig, TrainConfig
from study.plateau import Plateau
from study.store import Store
from study.store.schema import RunRow, StudyRow
from tests.conftest import FAST_MODEL, ROOT, run_subprocess

TINY = ["--models", FAST_MODEL, "--image-size", "16", "--threads", "1", "--quiet", "--no-costs", "--no-deploy"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Digits at 16 px on the CPU: the data, half the pool as a subset, validation and test."""
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
    torch.set_num_threads(1)
    yield data, idx, splits.val, splits.test
    torch.set_num_threads(threads)


def _train(digits, control: bool = False, **train):
    from study.train import train_run

    data, idx, val, test = digits
    hp = TrainConfig(**train).resolved(FAST_MODEL)
    return train_run(data, idx, val, test, FAST_MODEL, hp, 0, torch.device("cpu"), control=control)


def test_the_stopping_rule_waits_patience_epochs_and_as_long_again_as_the_last_gain_took():
    rule = Plateau(patience=2, min_gain=0.01)
    # 0.50 sets the level; 0.505 is no gain of 1 point; 0.52 at epoch 3 is; then the run waits
    # max(patience, 3) = 3 epochs without one: it stops after epoch 6, not 5.
    val = [0.50, 0.505, 0.52, 0.525, 0.529, 0.52, 0.60]
    stops = [rule.stopped(e, v) for e, v in enumerate(val, start=1)]
    assert stops == [False, False, False, False, False, True, False]
    early = Plateau(patience=4, min_gain=0.01)  # a gain at epoch 1 only: patience decides
    assert [early.stopped(e, 0.9) for e in range(1, 6)] == [False, False, False, False, True]
    late = Plateau(patience=2, min_gain=0.01)  # a gain at epoch 10: no stop before epoch 20
    curve = [0.5 + 0.02 * min(e, 10) for e in range(1, 25)]
    assert next(e for e, v in enumerate(curve, start=1) if late.stopped(e, v)) == 20
    slow = Plateau(patience=2, min_gain=0.01)  # a slow climb of 0.6 points an epoch adds 1 point in 2 epochs
    assert not any(slow.stopped(e, 0.5 + 0.006 * e) for e in range(1, 30))


def test_a_run_on_data_it_fits_quickly_stops_on_its_plateau_before_its_cap(digits):
    result = _train(digits, max_steps=2000, patience=2)
    assert result.stop == "plateau" and result.control is None
    assert result.steps == result.epochs_run * 20 < 2000  # 20 steps an epoch (min_steps / epochs)
    val = [e.val_acc for e in result.history]
    assert max(val[-2:]) < max(val[:-2]) + 0.005  # the last `patience` epochs gained less than min_gain
    # the last epoch's averaged weights are the ones kept and tested
    assert result.test_acc > 0.8 and result.best_epoch == result.epochs_run and result.val_acc == val[-1]


def test_a_run_still_improving_at_its_cap_is_capped(digits):
    result = _train(digits, max_steps=40, warmup_steps=20, patience=4)
    assert result.stop == "capped" and result.epochs_run == 2 and result.steps == 40


def test_the_stop_is_the_same_on_every_attempt_and_the_control_leaves_the_run_as_it_was(digits):
    first = _train(digits, max_steps=2000, patience=2)
    again = _train(digits, max_steps=2000, patience=2, control=True)
    assert (again.stop, again.epochs_run, again.best_epoch) == (first.stop, first.epochs_run, first.best_epoch)
    assert again.test_acc == first.test_acc and np.array_equal(again.predictions, first.predictions)
    control = again.control
    assert control["steps"] == 2 * first.steps  # as many steps again
    assert control["best_epoch"] == 2 * first.epochs_run  # what it would have kept: the last epoch
    # the test images its extra steps changed account for its gain, image for image
    n = len(first.predictions)
    assert control["gained"] + control["lost"] <= n
    assert control["test_acc"] - first.test_acc == pytest.approx((control["gained"] - control["lost"]) / n)


def _plateau_study(tmp_path, gains: dict[str, float], capped=()):
    """A synthetic plateau-budget study of two models: every run stopped on its plateau except
    ``capped`` (model, fraction, seed); seed 0 at the ends carries a control ``gains[model]`` better."""
    study = make_study(
        tmp_path / "study.db",
        curves={"mobilenetv2_100": (0.93, 4.0, 0.55), "resnet18": (0.95, 3.0, 0.5)},
        seeds=3,
        fractions=(0.1, 0.5, 1.0),
        noise=0.01,
        val_curve="plateau",
    )
    store = Store(study.url)
    with store.session() as s:
        row = s.query(StudyRow).one()
        row.config = {**row.config, "train": {**row.config["train"], "budget": "plateau", "patience": 4}}
        s.execute(update(RunRow).values(stop="plateau", steps_run=200))
        for model, fraction, seed in capped:
            cell = (RunRow.model == model) & (RunRow.size_value == fraction) & (RunRow.seed == seed)
            s.execute(update(RunRow).where(cell).values(stop="capped", steps_run=2000))
        for model, gain in gains.items():
            for fraction in (0.1, 1.0):
                cell = (RunRow.model == model) & (RunRow.size_value == fraction) & (RunRow.seed == 0)
                s.execute(
                    update(RunRow)
                    .where(cell)
                    .values(control_test_acc=RunRow.test_acc + gain, control_val_acc=0.9, control_steps=400)
                )
    return load_study(study.url, study.name)


def test_the_control_decides_its_cells_by_the_gain_of_twice_the_steps_over_the_seed_noise(tmp_path):
    data = _plateau_study(tmp_path, {"mobilenetv2_100": 0.08, "resnet18": 0.002}, capped=[("resnet18", 0.5, 2)])
    done = data.done
    control = in_run_control(done)
    assert len(control) == 4 and set(control["seed"]) == {0}  # 2 models x (smallest, largest size)
    runs = run_convergence(done, data.epochs)
    assert runs["capped"].sum() == 1
    cells = cell_convergence(done, runs, control).set_index(["model", "n_train"])
    by_fraction = dict(zip(sorted(done["fraction"].unique()), sorted(done["n_train"].unique())))
    small, mid, large = (by_fraction[f] for f in sorted(by_fraction))
    mnv2 = cells.loc["mobilenetv2_100"]
    # +8 points from twice the steps, far over max(2 x seed std, 1 point): not converged.
    assert (mnv2.loc[[small, large], "evidence"] == "budget control").all()
    assert not mnv2.loc[[small, large], "converged"].any()
    assert np.allclose(mnv2.loc[[small, large], "control_gain"], 0.08)
    assert (mnv2.loc[[small, large], "threshold"] >= 0.01).all()
    r18 = cells.loc["resnet18"]
    assert r18.loc[[small, large], "converged"].all()  # +0.2 points: within the noise
    # A capped run makes its cell not converged, whatever else says; cells without a control or a
    # capped run are judged by their runs' stops.
    assert r18.loc[mid, "evidence"] == "cap" and not r18.loc[mid, "converged"]
    assert mnv2.loc[mid, "evidence"] == "plateau stops" and mnv2.loc[mid, "converged"]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--budget", "weekly"], "train.budget='weekly' is unknown; valid: plateau, fixed"),
        (["--patience", "0"], "train.patience=0 is invalid with train.budget='plateau'; use 1 or more epochs"),
        (["--max-steps", "10", "--warmup-steps", "20"], "train.max_steps=10 is below train.warmup_steps=20"),
        (["--min-gain", "10.5"], "train.min_gain=10.5 is invalid; use validation accuracy points in [0, 10]"),
        (["--min-gain", "-1"], "train.min_gain=-1.0 is invalid"),
    ],
)
def test_bad_budget_settings_are_refused_in_one_line_before_anything_is_written(cli, tmp_path, flags, fragment):
    code, out, err = cli("run", "--out", tmp_path / "o", *TINY, *flags)
    assert code == 2, (out, err)
    (line,) = err.strip().splitlines()
    assert line.startswith("study: error: ") and fragment in line
    assert not (tmp_path / "o").exists()


def test_a_study_under_the_plateau_budget_records_stops_and_its_control_end_to_end(cli, tmp_path):
    out = tmp_path / "o"
    args = [
        *TINY,
        "--fractions",
        "0.25,1.0",
        "--seeds",
        "2",
        "--max-steps",
        "120",
        "--patience",
        "2",
        "--min-gain",
        "0.5",
    ]
    args += ["--jobs", "1"]
    code, stdout, err = cli("run", "--out", out, *args)
    assert code == 0, err
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and {r["stop"] for r in rows} <= {"plateau", "capped"}
    for r in rows:
        assert int(r["steps_run"]) <= 120
        # seed 0 at both ends carries the control when it stopped on its plateau, no other run does
        assert (r["control_test_acc"] != "") == (r["seed"] == "0" and r["stop"] == "plateau")
        assert (r["control_gained"] != "") == (r["control_lost"] != "") == (r["control_test_acc"] != "")
    md = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert "runs trained under the plateau budget" in md and "| train.budget | plateau |" in md
    assert "a plateau budget of 2 epochs' patience, a 0.5-point minimum gain and a 120-step cap" in md


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "study", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(db_path, query: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db_path.exists():
            try:
                with sqlite3.connect(db_path, timeout=5) as db:
                    if db.execute(query).fetchone():
                        return
            except sqlite3.OperationalError:  # tables not made yet
                pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {query}")


@pytest.mark.slow  # two small studies, one stopped mid-run and resumed on two workers (~1 min on 2 cores)
def test_the_plateau_stop_does_not_depend_on_the_worker_or_on_a_kill_and_resume(tmp_path):
    # The default thread plan, which differs between the two: one worker (it used to get every core,
    # and rounded differently), then two. The layout is fixed: it is chosen once per study, and
    # these are two studies.
    tiny = [a for a in TINY if a not in ("--threads", "1")] + ["--channels-last", "off"]
    cells = ["--fractions", "0.5,1.0", "--seeds", "1", "--max-steps", "400", "--patience", "3", "--no-report"]
    whole = run_subprocess("run", "--out", tmp_path / "a", *tiny, *cells, "--jobs", "1")
    assert whole.returncode == 0, whole.stderr
    b = tmp_path / "b"
    proc = _start("run", "--out", b, *tiny, *cells, "--jobs", "1")
    _wait_for(b / "study.db", "select 1 from workers where doing like 'run %: epoch 2/%'")  # a run mid-way
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    resumed = run_subprocess("run", "--out", b, *tiny, *cells, "--jobs", "2")  # other workers finish it
    assert resumed.returncode == 0, resumed.stderr
    columns = ["model", "n_train", "seed", "stop", "epochs_run", "best_epoch", "steps_run", "test_acc"]
    columns += ["control_test_acc", "control_gained", "control_lost"]
    first, second = (pd.read_csv(p / "results.csv")[columns] for p in (tmp_path / "a", b))
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.parametrize("pruner", ["median", pytest.param("hyperband", marks=pytest.mark.slow)])  # ~8 s
def test_tuning_trials_stop_on_their_plateau_and_the_pruner_takes_trials_of_different_lengths(digits, tmp_path, pruner):
    import optuna

    from study.config import TuneConfig
    from study.tune import optuna_storage, tune_cell

    data, idx, val, _ = digits
    storage = optuna_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    tune = TuneConfig(trials=4, lr=[1e-4, 3e-2], weight_decay=[], augment=[], augment_strength=[], normalization=[])
    tune = dataclasses.replace(tune, pruner=pruner, startup_trials=1, warmup_epochs=1)

    def train(hp, on_epoch):
        from study.train import train_run

        return train_run(data, idx, val, val, FAST_MODEL, hp, 0, torch.device("cpu"), on_epoch=on_epoch)

    base = TrainConfig(max_steps=160, patience=2, augment="none").resolved(FAST_MODEL)
    study = tune_cell("cell", storage, train, base, tune, {"study": "s"})
    trials = study.get_trials()
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len(trials) == 4 and all(t.state in finished for t in trials)
    for t in trials:  # each trial reported every epoch it trained, at most the cap's 8
        assert len(t.intermediate_values) == t.user_attrs["epochs_run"] <= 160 // 20
