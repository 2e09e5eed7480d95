"""The command line: bad input refused in one line with status 2; a real study end to end."""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import FAST_MODEL, ROOT, TINY_STUDY, run_subprocess, write_imagefolder

SMALL = [*TINY_STUDY, "--quiet"]


def _refused(result, fragment):
    code, out, err = result
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("study: error: ") and fragment in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--fractions", "0"], "fraction 0.0 is invalid; fractions must lie in (0, 1]"),
        (["--fractions", "1.5"], "fraction 1.5 is invalid"),
        (["--fractions", "0.1,half"], "fractions='half' is not a number"),
        (["--seeds", "0"], "seeds=0 is invalid"),
        (["--models", "resnet_18"], "model 'resnet_18' is not a timm model; closest valid names: resnet18"),
        (["--dataset", "imagefolder"], "needs data.root"),
        (["--dataset", "imagefolder", "--data-root", "/nonexistent/x"], "'/nonexistent/x' does not exist"),
        (["--per-class", "500"], "per_class 500 is more than class"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--frac", "0.5"], "unrecognized arguments: --frac 0.5"),  # no abbreviation of --fractions
    ],
)
def test_bad_input_is_refused_in_one_line(cli, tmp_path, args, fragment):
    _refused(cli("run", "--out", tmp_path, *SMALL, *args), fragment)
    assert not (tmp_path / "study.db").exists() or args[0] in ("--per-class",)


def test_empty_folder_and_unreadable_class_are_refused(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    _refused(
        cli("run", "--out", tmp_path / "o", *SMALL, "--dataset", "imagefolder", "--data-root", tmp_path / "empty"),
        "has no class folders",
    )
    root = write_imagefolder(tmp_path / "data", {"a": 8})
    (root / "b").mkdir()
    (root / "b" / "x.jpg").write_bytes(b"garbage")
    _refused(
        cli("run", "--out", tmp_path / "o", *SMALL, "--dataset", "imagefolder", "--data-root", root), "class folder"
    )


def test_a_dataset_of_one_class_is_refused_before_anything_is_written(cli, tmp_path):
    """A classifier needs two classes: one class folder is refused in the issue's words, before
    the cache, the store or the out folder exists; the same for a [[datasets]] entry, even when
    the dataset before it is fine."""
    root = write_imagefolder(tmp_path / "one", {"cat": 20})
    out = tmp_path / "o"
    code, _, err = cli("run", "--out", out, *SMALL, "--dataset", "imagefolder", "--data-root", root)
    assert code == 2
    assert err.strip() == "study: error: data.root has 1 class folder ('cat'); a classifier needs at least 2"
    assert not out.exists()
    config = tmp_path / "two.toml"
    config.write_text(
        f'[[datasets]]\nname = "digits"\ndataset = "digits"\n\n'
        f'[[datasets]]\nname = "cats"\ndataset = "imagefolder"\nroot = "{root}"\n'
    )
    code, _, err = cli("run", "--out", out, "--config", config, *SMALL)
    assert code == 2
    assert err.strip() == "study: error: dataset 'cats': root has 1 class folder ('cat'); a classifier needs at least 2"
    assert not out.exists()


def test_class_too_small_to_split_is_refused(cli, tmp_path):
    root = write_imagefolder(tmp_path / "data", {"big": 12, "tiny": 3})
    _refused(
        cli("run", "--out", tmp_path / "o", *SMALL, "--dataset", "imagefolder", "--data-root", root),
        "class 'tiny' has 3 image(s)",
    )


def test_a_changed_setting_is_refused_without_touching_stored_results(cli, tmp_path):
    code, _, _ = cli("run", "--out", tmp_path, *SMALL, "--fractions", "1.0", "--seeds", "1", "--no-report")
    assert code == 0
    before = (tmp_path / "study.db").read_bytes()
    _refused(
        cli("run", "--out", tmp_path, *SMALL, "--fractions", "1.0", "--seeds", "1", "--lr", "0.01"),
        "was run with train.lr=0.0, this config has train.lr=0.01",
    )
    code, out, _ = cli("status", "--out", tmp_path)
    assert code == 0 and "done     1" in out
    code, _, _ = cli(
        "run",
        "--out",
        tmp_path,
        *SMALL,
        "--fractions",
        "1.0",
        "--seeds",
        "1",
        "--lr",
        "0.01",
        "--name",
        "other",
        "--no-report",
    )
    assert code == 0
    assert len(before) > 0


def test_init_writes_a_config_that_runs(cli, tmp_path):
    path = tmp_path / "study.toml"
    code, out, _ = cli("init", path)
    assert code == 0 and path.exists()
    _refused(cli("init", path), "already exists")


@pytest.mark.slow  # a whole study on decoded files (~11 s); test_datasets covers the skip itself
def test_imagefolder_study_end_to_end_skips_a_corrupt_file(cli, tmp_path):
    root = write_imagefolder(tmp_path / "data", {"a": 10, "b": 10, "c": 10})
    (root / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out, err = cli(
        "run",
        "--out",
        tmp_path / "o",
        *SMALL,
        "--dataset",
        "imagefolder",
        "--data-root",
        root,
        "--fractions",
        "0.5,1",
        "--seeds",
        "2",
    )
    assert code == 0, err
    assert "1 file(s) could not be decoded and were skipped" in err
    rows = list(csv.DictReader(open(tmp_path / "o" / "results.csv")))
    assert len(rows) == 4


def test_digits_study_end_to_end(tmp_path):
    """A real `python -m study run` in its own process: every run stored, CSV and report written."""
    out = tmp_path / "o"
    proc = run_subprocess("run", "--out", out, *SMALL, "--fractions", "0.25,1.0", "--seeds", "2", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4
    for column in (
        "dataset",
        "model",
        "fraction",
        "n_train",
        "seed",
        "test_acc",
        "test_loss",
        "train_seconds",
        "images_per_second",
    ):
        assert rows[0][column] != ""
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert (out / "report" / "index.html").exists() and (out / "report" / "figures" / "learning_curves.png").exists()
    db = sqlite3.connect(out / "study.db")
    (n_epochs,) = db.execute("select count(*) from epochs").fetchone()
    (n_preds,) = db.execute("select count(*) from predictions").fetchone()
    assert n_epochs == 4 * 2 and n_preds == 4
    # the same command again trains nothing more (its report is the same, so not built again)
    again = run_subprocess(
        "run", "--out", out, *SMALL, "--fractions", "0.25,1.0", "--seeds", "2", "--jobs", "2", "--no-report"
    )
    assert again.returncode == 0 and "4 done" in again.stdout
    assert db.execute("select count(*) from runs").fetchone()[0] == 4


@pytest.mark.slow  # four processes start one after the other (~30 s)
def test_a_study_killed_at_any_moment_resumes_without_losing_or_repeating_runs(tmp_path):
    """SIGKILL with no run finished yet, after one, after several; each time the SQLite file is
    intact and every finished run is still there, unchanged; the last start finishes the rest."""
    out = tmp_path / "o"
    args = [
        "run",
        "--out",
        out,
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
        "12",
        "--fractions",
        "0.5,1.0",
        "--seeds",
        "3",
        "--jobs",
        "1",
        "--threads",
        "1",
        "--quiet",
        "--no-report",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    db_path = out / "study.db"
    kept: dict[int, str] = {}
    for finished in (0, 1, 3):  # finished runs when the kill lands
        proc = subprocess.Popen(
            [sys.executable, "-m", "study", *map(str, args)],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(0.05)
            try:
                statuses = [s for (s,) in sqlite3.connect(db_path).execute("select status from runs")]
            except sqlite3.OperationalError:  # not created yet
                continue
            if statuses.count("done") >= finished and "running" in statuses:  # killed inside a run
                break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        db = sqlite3.connect(db_path)
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        done = dict(db.execute("select id, finished_at from runs where status = 'done'").fetchall())
        assert finished <= len(done) < 6, "the kill should land midway"
        assert {i: done[i] for i in kept} == kept  # runs finished before an earlier kill are kept, not redone
        kept = done
    resumed = run_subprocess(*args)
    assert resumed.returncode == 0, resumed.stderr
    db = sqlite3.connect(db_path)
    rows = db.execute("select id, status, cell_key, finished_at from runs").fetchall()
    assert len(rows) == 6 and {r[1] for r in rows} == {"done"}
    assert len({r[2] for r in rows}) == 6
    assert {i: f for i, _, _, f in rows if i in kept} == kept
    per_run = db.execute("select run_id, count(*) from epochs group by run_id").fetchall()
    assert len(per_run) == 6 and all(n == 2 for _, n in per_run)  # nothing duplicated
    assert db.execute("select count(*) from predictions").fetchone()[0] == 6
    assert db.execute("pragma integrity_check").fetchone() == ("ok",) and db.execute(
        "pragma journal_mode"
    ).fetchone() == ("wal",)
