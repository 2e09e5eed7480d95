"""The deployment tables without training or ONNX Runtime: rows stored in a real store, read by
analysis.deployment (the CSV, drop from fp32, Pareto front, the choice under a budget), and a
report that builds, saying how to get the section, where onnxruntime cannot be imported."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from analysis.deployment import CSV_COLUMNS, best_within_budget, deployment_csv, load_deployments, pareto_front
from study.store import DONE, RunRow, Store
from tests.synthetic import make_study

# (model, runtime, precision): size MB, p50 ms with one thread, test accuracy
VARIANTS = {
    ("mobilevit_xxs", "pytorch", "fp32"): (4.0, 9.0, 0.95),
    ("mobilevit_xxs", "onnxruntime", "fp32"): (4.1, 3.0, 0.95),
    ("mobilevit_xxs", "onnxruntime", "int8-static"): (1.2, 2.5, 0.93),
    ("resnet18", "pytorch", "fp32"): (43.0, 6.0, 0.97),
    ("resnet18", "onnxruntime", "fp32"): (43.0, 4.0, 0.97),
    ("resnet18", "onnxruntime", "int8-static"): (11.0, 2.0, 0.96),
}


@pytest.fixture
def stored(tmp_path):
    made = make_study(
        tmp_path / "study.db",
        curves={"mobilevit_xxs": (0.95, 6.0, 0.55), "resnet18": (0.90, 3.0, 0.5)},
        fractions=(0.5, 1.0),
        seeds=2,
    )
    store = Store(made.url)
    study_id = store.study(made.name).id
    runs = {(r.model, r.size_value, r.seed): r for r in store.runs(study_id, DONE)}
    for (model, runtime, precision), (size, p50, acc) in VARIANTS.items():
        store.save_deployment(
            study_id,
            runs[(model, 1.0, 0)].id,
            runtime,
            precision,
            {
                "status": "done",
                "size_mb": size,
                "latency_p50_ms_1t": p50,
                "latency_p95_ms_1t": 1.5 * p50,
                "latency_p50_ms_all": p50 / 2,
                "latency_p95_ms_all": p50,
                "threads_all": 2,
                "test_acc": acc,
                "details": {"load_average_1m": 3.5},
            },
        )
    store.save_deployment(
        study_id, runs[("resnet18", 1.0, 0)].id, "onnxruntime", "int8-dynamic", {"status": "failed", "error": "X: no"}
    )
    return SimpleNamespace(url=made.url, name=made.name, store=store, study_id=study_id, made=made)


def test_rows_drop_from_fp32_and_csv(stored):
    table = load_deployments(stored.url, stored.name)
    assert len(table) == 7 and (table["status"] == "failed").sum() == 1
    static = table[(table["model"] == "resnet18") & (table["precision"] == "int8-static")].iloc[0]
    assert static["drop_from_fp32"] == pytest.approx(0.01)
    assert static["load_average_1m"] == 3.5
    csv = deployment_csv(table, "digits")
    assert list(csv.columns) == CSV_COLUMNS
    assert len(csv) == 12  # 6 measured variants x (1 thread, all threads); the failed one is left out
    one = csv[(csv["arm"] == "resnet18") & (csv["precision"] == "int8-static") & (csv["threads"] == 1)].iloc[0]
    assert (one["latency_p50_ms"], one["latency_p95_ms"], one["size_mb"]) == (2.0, 3.0, 11.0)
    assert (csv["n_train"] == stored.made.sizes[1.0]).all() and (csv["dataset"] == "digits").all()


def test_pareto_front():
    latency = np.array([1.0, 2.0, 3.0, 2.0, 4.0])
    accuracy = np.array([0.90, 0.95, 0.94, 0.95, 0.99])
    assert pareto_front(latency, accuracy).tolist() == [True, True, False, True, True]


@pytest.mark.parametrize(
    "latency, size, expected",
    [
        (0, 0, ("resnet18", "onnxruntime")),  # no budget: the most accurate (0.97), the faster of the tie
        (3.0, 0, ("resnet18", "int8-static")),
        (2.6, 5.0, ("mobilevit_xxs", "int8-static")),
        (1.0, 0, None),
    ],
)
def test_most_accurate_within_budget(stored, latency, size, expected):
    table = load_deployments(stored.url, stored.name)
    choice = best_within_budget(table, latency, size).iloc[0]
    if expected is None:
        assert pd.isna(choice["model"]) and choice["n_fitting"] == 0
        return
    model, what = expected
    assert choice["model"] == model
    assert what in (choice["runtime"], choice["precision"])


def test_budget_flags_name_the_choice_in_the_report(stored, cli, tmp_path):
    code, _, err = cli(
        "report", "--out", tmp_path, "--name", stored.name, "--latency-budget-ms", "3", "--size-budget-mb", "20"
    )
    assert code == 0, err
    md = (tmp_path / "report" / "report.md").read_text()
    assert "choose **resnet18** (onnxruntime, int8-static)" in md
    assert "p50 with one thread ≤ 3 ms, file ≤ 20 MB" in md
    assert "X: no" in md  # the failed variant's reason
    code, _, err = cli("report", "--out", tmp_path, "--name", stored.name, "--size-budget-mb", "big")
    assert code == 2 and "size_budget_mb" in err


def test_without_onnxruntime_the_study_skips_deployment_and_the_report_says_how(cli, tmp_path, monkeypatch):
    import study.deploy
    from study.config import StudyConfig

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    made = make_study(tmp_path / "study.db", seeds=2)
    store = Store(made.url)
    ctx = SimpleNamespace(cfg=StudyConfig(), store=store, study_id=store.study(made.name).id)
    for run in store.runs(ctx.study_id, DONE):  # kept by the workers, as a study run without the extra keeps them
        if run.size_value == 1.0:
            store.save_weights(run.id, b"safetensors bytes")
    assert study.deploy.deploy_study(ctx) == [
        "deployment skipped: onnxruntime is not installed (pip install onnx onnxruntime onnxscript)"
    ]
    code, out, err = cli("report", "--out", tmp_path, "--name", made.name)
    assert code == 0, err
    md = (tmp_path / "report" / "report.md").read_text()
    assert "No trained model has been exported yet" in md and "which are not installed here" in md
    assert "pip install onnx onnxruntime onnxscript" in md
    assert "## 4. Costs" in md and "## 5. Tuning" in md  # the rest of the report is there
    assert list(pd.read_csv(tmp_path / "report" / "deployment.csv").columns) == CSV_COLUMNS


def test_a_study_whose_runs_kept_no_weights_says_so(tmp_path, cli):
    made = make_study(tmp_path / "study.db", seeds=2)
    assert cli("report", "--out", tmp_path, "--name", made.name)[0] == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "No run of this study kept its trained weights" in md and "A new study (`--name`)" in md


def test_deploy_command_refuses_bad_input(stored, cli, tmp_path):
    code, _, err = cli("deploy", "--out", tmp_path, "--name", "nope")
    assert code == 2 and "study 'nope' is not in" in err and "synthetic" in err
    code, _, err = cli("deploy", "--out", tmp_path, "--name", stored.name, "--deploy-runs", "some")
    assert code == 2 and "deploy.runs='some' is unknown; valid: best, all" in err


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_only_the_best_seeds_weights_are_kept_whatever_the_order(tmp_path, order):
    made = make_study(tmp_path / "study.db", curves={"resnet18": (0.90, 3.0, 0.5)}, fractions=(1.0,), seeds=3)
    store = Store(made.url)
    study_id = store.study(made.name).id
    runs = {r.seed: r for r in store.runs(study_id, DONE)}
    val = {0: 0.80, 1: 0.85, 2: 0.85}  # seeds 1 and 2 tie: the lower seed wins
    with store.session() as s:
        for seed, acc in val.items():
            s.get(RunRow, runs[seed].id).val_acc = acc
    for seed in order:
        store.save_weights(runs[seed].id, f"weights of seed {seed}".encode(), best_only=True)
    assert store.runs_with_weights(study_id) == {runs[1].id}
    assert store.weights(runs[1].id) == b"weights of seed 1"
    store.save_weights(runs[0].id, b"all", best_only=False)  # deploy.runs = "all" keeps every run
    assert store.runs_with_weights(study_id) == {runs[0].id, runs[1].id}
