"""MLflow tracking (``--mlflow``): a real MLflow store in a temporary folder, read back with
MLflow's own client after real tiny studies. Mocks only make the tracker fail mid-study."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from study.masking import masked_url
from tests.conftest import LONG_RUNS, ROOT, TINY_STUDY, run_subprocess

if os.environ.get("STUDY_REQUIRE_MLFLOW") == "1":  # CI installed the extra: these tests must run, not skip
    import mlflow
else:
    mlflow = pytest.importorskip("mlflow", reason="the tracking extra: pip install -e '.[tracking]'")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's opt-in to the folder store the tests read

TINY = [*TINY_STUDY, "--quiet", "--no-deploy", "--no-costs", "--no-budget-control"]
PASSWORD = "s3cret-Pw"


def _client(folder: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=folder.absolute().as_uri())


def _runs(folder: Path, experiment: str = "default") -> list:
    client = _client(folder)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, [e.name for e in client.search_experiments()]
    return client.search_runs([found.experiment_id], max_results=1000)


def _kind(runs: list, kind: str) -> list:
    return [r for r in runs if r.data.tags.get("study.kind") == kind]


def _check_tracked_study(out: Path, folder: Path, n_runs: int) -> set[str]:
    """The tracker holds one parent and one child per run of the study in ``out``, each child
    with its cell, settings, epochs and test metrics as the store has them; returns the workers."""
    client = _client(folder)
    runs = _runs(folder)
    (parent,) = _kind(runs, "study")
    children = _kind(runs, "run")
    results = pd.read_csv(out / "results.csv")
    assert len(children) == len(results) == n_runs
    assert parent.info.status == "FINISHED" and parent.info.run_name == "default"
    db = sqlite3.connect(out / "study.db")
    fingerprint = db.execute("select fingerprint from dataset_studies").fetchone()[0]
    store_url = masked_url(f"sqlite:///{(out / 'study.db').absolute()}")
    workers = set()
    for child in children:
        tags, params, metrics = child.data.tags, child.data.params, child.data.metrics
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED" and tags["study.status"] == "done"
        assert tags["study.name"] == "default" and tags["study.fingerprint"] == fingerprint
        assert tags["study.store"] == store_url
        workers.add(tags["study.worker"])
        row = results[(results["seed"] == int(params["seed"])) & (results["n_train"] == int(params["n_train"]))]
        assert len(row) == 1
        row = row.iloc[0]
        # The cell, and every resolved training setting (the Methods table's values).
        assert params["arm"] == params["model"] == "test_resnet" and params["dataset"] == "digits"
        assert float(params["size_value"]) == pytest.approx(row["size_value"])
        assert params["train.epochs"] == "2" and params["train.min_steps"] == "4" and float(params["train.lr"]) == 4e-3
        assert params["hparams_source"] == "config" and params["tuned"] == "none"
        assert metrics["test_acc"] == row["test_acc"]
        assert metrics["test_loss"] == pytest.approx(row["test_loss"], rel=1e-12)
        assert metrics["test_f1"] == pytest.approx(row["test_f1"], rel=1e-12)
        history = client.get_metric_history(child.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(1, int(row["epochs_run"]) + 1))
        stored = db.execute(
            "select e.val_acc from epochs e join runs r on r.id = e.run_id where r.id = ? order by e.epoch",
            (int(tags["study.run_id"]),),
        ).fetchall()
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == [v for (v,) in stored]
        for key in ("train_loss", "train_acc", "lr", "seconds"):
            assert len(client.get_metric_history(child.info.run_id, key)) == row["epochs_run"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report", "results.csv"} <= artifacts
    assert "report/index.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    return workers


def test_a_tracked_study_has_one_parent_and_one_child_per_run(cli, tmp_path):
    out, folder = tmp_path / "o", tmp_path / "mlruns"
    code, _, err = cli(
        "run", "--out", out, *TINY, "--fractions", "0.5,1.0", "--seeds", "1", "--jobs", "1", "--mlflow", folder
    )
    assert code == 0, err
    assert "warning" not in err.lower()
    assert len(_check_tracked_study(out, folder, 2)) == 1


@pytest.mark.slow
def test_worker_processes_nest_their_runs_under_one_parent(tmp_path):
    """Two pool workers, each with its own client, and then a `study worker` process, all find
    the same parent."""
    out, folder = tmp_path / "o", tmp_path / "mlruns"
    result = run_subprocess(
        "run", "--out", out, *TINY, "--fractions", "0.5,1.0", "--seeds", "2", "--jobs", "2", "--mlflow", folder
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower()
    assert len(_check_tracked_study(out, folder, 4)) == 2  # two processes, each its own client
    again = run_subprocess("worker", "--storage", f"sqlite:///{out / 'study.db'}", "--mlflow", folder, "--quiet")
    assert again.returncode == 0, again.stderr
    assert len(_kind(_runs(folder), "study")) == 1


def test_trials_are_runs_of_their_own_and_tuned_settings_are_marked(cli, tmp_path):
    folder = tmp_path / "mlruns"
    code, _, err = cli(
        "run", "--out", tmp_path / "o", *TINY, "--fractions", "1.0", "--seeds", "1", "--jobs", "1",
        "--trials", "2", "--mlflow", folder,
    )  # fmt: skip
    assert code == 0, err
    runs = _runs(folder)
    (parent,) = _kind(runs, "study")
    trials, (run,) = _kind(runs, "trial"), _kind(runs, "run")
    assert len(trials) == 2
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert trial.info.status == "FINISHED" and trial.data.tags["study.status"] in ("complete", "pruned")
        assert "val_acc" in trial.data.metrics and "train.lr" in trial.data.params
    assert run.data.params["hparams_source"].startswith("tuned:")
    assert run.data.tags["study.tuned"] == "lr,weight_decay,augment,augment_strength,normalization"


def test_a_tracker_failing_mid_study_costs_no_run(cli, tmp_path, monkeypatch):
    """The tracker breaks after the first run started: one warning, and the study finishes."""
    from mlflow.tracking import MlflowClient

    calls = {"n": 0}
    log_batch = MlflowClient.log_batch

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise ConnectionError("the tracking server went away")
        return log_batch(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", failing)
    out = tmp_path / "o"
    code, stdout, err = cli(
        "run", "--out", out, *TINY, "--fractions", "0.5,1.0", "--seeds", "1", "--jobs", "1", "--mlflow",
        tmp_path / "mlruns",
    )  # fmt: skip
    assert code == 0, err
    assert "2 done, 0 failed" in stdout
    warnings = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "MLflow tracking at" in warnings[0] and "the study goes on" in warnings[0]
    assert "ConnectionError: the tracking server went away" in warnings[0]
    assert len(pd.read_csv(out / "results.csv")) == 2


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("ftp://host/mlruns", "has the unknown scheme 'ftp://'"),
        ("http://", "names no host"),
        ("http://tracker:port", "has a port that is not a number"),
        ("sqlite:///{tmp}/missing/mlflow.db", "does not exist; SQLite makes a file, not its folder"),
        ("sqlite:///:memory:", "in-memory database"),
        ("{tmp}/a-file", "is a file, not a folder"),
    ],
)
def test_a_bad_tracking_uri_is_refused_before_anything_is_written(cli, tmp_path, uri, fragment):
    (tmp_path / "a-file").write_text("not a folder")
    uri = uri.format(tmp=tmp_path)
    out = tmp_path / "o"
    for command in (["run", "--out", out, *TINY], ["worker", "--storage", f"sqlite:///{out / 'study.db'}"]):
        code, _, err = cli(*command, "--mlflow", uri)
        assert code == 2, err
        (line,) = err.strip().splitlines()
        assert line.startswith("study: error: tracking.mlflow=") and fragment in line, line
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written, the tracker neither


def test_a_tracker_without_mlflow_installed_is_refused_before_anything_is_written(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails, as without the extra
    out = tmp_path / "o"
    code, _, err = cli("run", "--out", out, *TINY, "--mlflow", tmp_path / "mlruns")
    assert code == 2
    assert err.strip().endswith(
        "needs MLflow, which is not installed: pip install -e '.[tracking]' (or pip install mlflow)"
    )
    assert not out.exists() and not (tmp_path / "mlruns").exists()
    assert cli("status", "--out", out)[0] == 2  # no study there, but not for want of MLflow


def test_the_config_file_names_the_tracker_and_the_store_keeps_it_without_password(tmp_path):
    from study import config
    from study.plan import stored_config

    path = tmp_path / "study.toml"
    path.write_text(f'[tracking]\nmlflow = "{tmp_path / "mlruns"}"\n')
    assert config.load(path).tracking.mlflow == str(tmp_path / "mlruns")
    with_password = config.load(None, {"tracking.mlflow": f"https://me:{PASSWORD}@tracker.example"})
    assert stored_config(with_password)["tracking"]["mlflow"] == "https://me:***@tracker.example"
    # A worker takes the tracker from its own flags, not from the study's stored config.
    assert config.from_stored(config.to_dict(with_password)).tracking.mlflow == ""


def test_passwords_never_reach_the_tracker(tmp_path):
    """A study in a PostgreSQL store with a password: its runs carry the URL masked, and the
    error of a failed run is masked too (the tracker's own files are searched for the password)."""
    from types import SimpleNamespace

    from study import tracking
    from study.store.schema import Cell

    folder = tmp_path / "mlruns"
    url = f"postgresql+psycopg://me:{PASSWORD}@db.example/studies"
    info = tracking.StudyInfo("masked", "k" * 16, "masked", tracking.study_tags("masked", url, "f" * 32))
    tracker = tracking.Tracker(str(folder))
    tracker.open_study(info, {"storage": url})
    run = tracker.start_run(info, tracking.RUN, Cell("m", "fraction", 1.0, 0).key, {"storage": url}, {})
    run.epoch(SimpleNamespace(epoch=1, train_loss=1.0, val_acc=0.5))
    run.end("FAILED", "failed", error=f"OperationalError: connection to {url} refused")
    assert tracker.flush() and not tracker.failed
    (child,) = _kind(_runs(folder, "masked"), "run")
    assert child.info.status == "FAILED"
    assert child.data.tags["study.store"] == "postgresql+psycopg://me:***@db.example/studies"
    assert "me:***@db.example" in child.data.tags["study.error"]
    assert not [p for p in folder.rglob("*") if p.is_file() and PASSWORD in p.read_text(errors="replace")]


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study", *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_runs_stopped_by_ctrl_c_are_not_left_running(tmp_path):
    """Ctrl-C while both pool workers train: their runs go back to the store, and the tracker
    records them ended (KILLED), the study's parent too."""
    folder, out = tmp_path / "mlruns", tmp_path / "o"
    slow = [*TINY, *LONG_RUNS, "--heartbeat", "0.5", "--grace-period", "3"]
    proc = _start(
        "run", "--out", out, *slow, "--fractions", "0.5,1.0", "--seeds", "2", "--jobs", "2", "--mlflow", folder
    )
    try:
        end = time.monotonic() + 300
        running = []
        while len(running) < 2:  # both workers' runs are in the tracker and training
            assert time.monotonic() < end, "timed out waiting for two running runs in the tracker"
            assert proc.poll() is None, proc.communicate()
            try:
                running = [r for r in _kind(_runs(folder), "run") if r.info.status == "RUNNING"]
            except (AssertionError, mlflow.exceptions.MlflowException):  # no experiment yet
                running = []
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    runs = _runs(folder)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    stopped = [r for r in _kind(runs, "run") if r.info.status == "KILLED"]
    assert {r.info.run_id for r in running} <= {r.info.run_id for r in stopped}
    assert _kind(runs, "study")[0].info.status == "KILLED"


@pytest.mark.slow
def test_a_study_of_several_datasets_nests_a_parent_per_dataset(cli, tmp_path):
    """[[datasets]]: one parent for the study, one per dataset under it, each run under its
    dataset's parent; each dataset's report on its parent, the report across them on the top."""
    from tests.conftest import FAST_MODEL, write_imagefolder

    shapes = write_imagefolder(tmp_path / "shapes", {"a": 12, "b": 12, "c": 12})
    path = tmp_path / "two.toml"
    path.write_text(
        f'models = ["{FAST_MODEL}"]\nfractions = [1.0]\nseeds = 1\njobs = 1\nthreads = 1\nbudget_control = false\n'
        f'[[datasets]]\nname = "digits"\ndataset = "digits"\n\n'
        f'[[datasets]]\nname = "shapes"\ndataset = "imagefolder"\nroot = "{shapes}"\n\n'
        '[data]\nimage_size = 16\n[train]\nbudget = "fixed"\nepochs = 2\nmin_steps = 4\n'
        f'[tracking]\nmlflow = "{tmp_path / "mlruns"}"\n'
    )
    code, _, err = cli("run", "--out", tmp_path / "o", "--config", path, "--quiet", "--no-deploy", "--no-costs")
    assert code == 0, err
    client = _client(tmp_path / "mlruns")
    runs = _runs(tmp_path / "mlruns")
    parents = {r.data.tags["study.name"]: r for r in _kind(runs, "study")}
    assert set(parents) == {"default", "default/digits", "default/shapes"}
    top = parents["default"]
    for name in ("default/digits", "default/shapes"):
        assert parents[name].data.tags["mlflow.parentRunId"] == top.info.run_id
        (child,) = [r for r in _kind(runs, "run") if r.data.tags["study.name"] == name]
        assert child.data.tags["mlflow.parentRunId"] == parents[name].info.run_id
        assert {a.path for a in client.list_artifacts(parents[name].info.run_id)} == {"report"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {"report", "results.csv"} <= {a.path for a in client.list_artifacts(top.info.run_id)}
