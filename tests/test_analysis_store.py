"""The analysis read from a real store: costs from the model_costs table, training costs,
sanity warnings, confusion matrices; and the promise that analysis and reports never import torch."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import analyse, load_study
from analysis.confusion import confusion_matrices
from analysis.costs import model_costs, time_to_target, training_costs
from analysis.sanity import chance_level, sanity_checks
from study.store import Store
from tests.conftest import ROOT
from tests.synthetic import REALISTIC_COSTS, make_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s.db"
    made = make_study(
        path, seeds=3, failed=(("resnet18", 0.1, 2),), pending=(("mobilevit_xxs", 1.0, 1),), costs=REALISTIC_COSTS
    )
    return made, load_study(made.url)


@pytest.fixture(scope="module")
def analysed(study):
    return analyse(study[1], n_boot_curves=20, n_boot_stats=200)


def test_import_without_torch():
    code = (
        "import analysis, reports, analysis.study_analysis, reports.build; import sys; assert 'torch' not in "
        "sys.modules, 'torch was imported'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_costs_come_from_the_model_costs_table(study):
    _, data = study
    assert sorted(data.costs["model"]) == ["mobilenetv2_100", "resnet18"]
    costs = model_costs(data.costs, data.runs).set_index("model")
    assert (
        costs.loc["resnet18", "latency_p50_ms_1t"] == 3.2
        and costs.loc["resnet18", "macs"] == 9.3e6
        and costs.loc["resnet18", "threads_all"] == 2
    )
    assert costs.loc["resnet18", "measured"] and not costs.loc["mobilevit_xxs", "measured"]
    assert np.isnan(costs.loc["mobilevit_xxs", "latency_p50_ms_1t"])
    assert costs.loc["mobilevit_xxs", "n_params"] == 951_666  # from its runs when not measured


def test_training_costs_and_time_to_target(study, analysed):
    made, data = study
    tc = training_costs(data.done)
    row = tc[(tc["model"] == "resnet18") & (tc["n_train"] == 200)].iloc[0]
    assert row["n_runs"] == 2  # seed 2 failed
    assert row["train_seconds"] == pytest.approx(3 * 200 / 900 + 0.5)
    assert row["seconds_per_epoch"] == pytest.approx((3 * 200 / 900 + 0.5) / 3)
    summary = analysed.summary
    targets = pd.DataFrame({"target": [0.75, 0.99]})
    ttt = time_to_target(summary, tc, targets).set_index(["model", "target"])
    s = summary[summary["model"] == "resnet18"].sort_values("n_train")
    first = int(s[s["mean"] >= 0.75]["n_train"].iloc[0])
    assert ttt.loc[("resnet18", 0.75), "n_train"] == first
    assert ttt.loc[("resnet18", 0.75), "train_seconds"] == pytest.approx(3 * first / 900 + 0.5)
    assert ttt.loc[("resnet18", 0.99), "note"] == "target not reached at any measured size"


def test_warnings_name_failed_and_missing_runs_and_seed_limits(study, analysed):
    _, data = study
    w = sanity_checks(data)
    assert w["severity"].iloc[0] == "error"
    diverged = w[w["check"] == "diverged_run"].iloc[0]
    assert diverged["model"] == "resnet18" and diverged["seed"] == 2 and "DivergedError" in diverged["message"]
    missing = w[w["check"] == "missing_runs"].iloc[0]
    assert missing["model"] == "mobilevit_xxs" and "seeds 1" in missing["message"]
    full = analysed.warnings
    notes = full[full["check"] == "too_few_seeds"]["message"].tolist()
    assert any("3 paired seeds the smallest possible two-sided Wilcoxon p is 0.25" in n for n in notes)


def test_chance_perfect_and_leak_warnings(tmp_path):
    made = make_study(
        tmp_path / "s.db",
        curves={"lucky": (1.2, 0.0, 0.5), "guessing": (0.15, 0.0, 0.5)},
        fractions=(0.5, 1.0),
        seeds=2,
    )
    store = Store(made.url)
    from study.store import StudyRow

    with store.session() as s:
        row = s.query(StudyRow).one()
        row.splits = {
            **row.splits,
            "dropped_duplicates": 3,
            "warnings": [
                "3 training/validation image(s) were exact copies of held-out images and were dropped to prevent "
                "leakage"
            ],
        }
    data = load_study(made.url)
    assert chance_level(data.y_test) == pytest.approx(0.2)
    w = sanity_checks(data)
    checks = set(w["check"])
    assert {"below_chance", "perfect_accuracy", "train_test_overlap"} <= checks
    assert (w[w["check"] == "below_chance"]["model"] == "guessing").all()
    assert (w[w["check"] == "perfect_accuracy"]["model"] == "lucky").all()
    assert "data" not in checks  # the split warning about the same copies is not repeated


def test_confusion_matrix_counts_every_full_data_prediction(study):
    made, data = study
    cm = confusion_matrices(data)
    one = cm[cm["model"] == "resnet18"]
    assert set(one["n_train"]) == {2000} and one["n_runs"].iloc[0] == 3
    assert one["count"].sum() == 3 * len(made.y_test)
    diag = one[one["true"] == one["predicted"]]["count"].sum()
    expected = sum(made.accuracies[("resnet18", 1.0, s)] for s in range(3)) * len(made.y_test)
    assert diag == pytest.approx(expected)
    assert one[one["true"] == 0]["share"].sum() == pytest.approx(1.0)
    assert set(one["true_name"]) == {"zero", "one", "two", "three", "four"}


def test_load_reads_a_database_without_the_costs_table(tmp_path):
    made = make_study(tmp_path / "s.db", fractions=(1.0,), seeds=1)
    import sqlite3

    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("drop table model_costs")
    db.commit()
    data = load_study(made.url)
    assert data.costs.empty and len(data.done) == 3
