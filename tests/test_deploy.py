"""Deployment (study/deploy.py): ONNX export with parity against PyTorch, dynamic and static int8
quantization on digits, CPU timing, failures recorded and not fatal, calibration on training
images only, and a report that builds without ONNX Runtime."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="the deploy extra: pip install 'study[deploy]'")

import study.deploy  # noqa: E402
from analysis.deployment import CSV_COLUMNS  # noqa: E402
from study.augment import to_model_input  # noqa: E402
from study.config import StudyConfig, TrainConfig  # noqa: E402
from study.deploy import (  # noqa: E402
    FP32,
    INT8_DYNAMIC,
    INT8_STATIC,
    ONNXRUNTIME,
    PYTORCH,
    Evaluation,
    TrainingImages,
    calibration_indices,
    deploy_model,
    export_onnx,
    ort_logits,
    ort_session,
)
from study.models import normalization  # noqa: E402
from study.plan import load_data  # noqa: E402
from study.train import TrainData, train_run  # noqa: E402
from tests.conftest import FAST_MODEL  # noqa: E402

SIDE = 16
SECONDS = 0.05  # timing per thread setting: tests check that latency is measured, not its value
INT8_TOLERANCE = 0.02  # int8 test accuracy may fall at most 2 points (7 of 360 digits) below fp32


def _inputs(dataset, model: nn.Module, normalization_mode: str = "model"):
    mean, std = (torch.tensor(v) for v in normalization(model, normalization_mode))
    images = torch.from_numpy(np.ascontiguousarray(dataset.images))

    def inputs(indices) -> np.ndarray:
        batch = images.index_select(0, torch.as_tensor(np.asarray(indices), dtype=torch.long))
        return to_model_input(batch, SIDE, mean, std).numpy()

    return inputs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """test_resnet trained on every training image of digits at 16 px (about 98% on test), and
    each of its deployed variants."""
    out = tmp_path_factory.mktemp("deploy")
    cfg = StudyConfig(out=str(out))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=SIDE))
    dataset, splits, _ = load_data(cfg)
    data = TrainData.from_arrays(dataset.images, dataset.labels, dataset.num_classes, torch.device("cpu"))
    hp = TrainConfig(budget="fixed", epochs=3, lr=3e-3, augment="none").resolved(FAST_MODEL)
    result = train_run(data, splits.pool, splits.val, splits.test, FAST_MODEL, hp, 0, torch.device("cpu"))
    model = study.deploy.load_trained(FAST_MODEL, dataset.num_classes, study.deploy.weights_bytes(result.weights))
    inputs = _inputs(dataset, model)
    test = np.asarray(splits.test)
    with torch.inference_mode():
        reference = model(torch.from_numpy(inputs(test))).numpy()
    evaluation = Evaluation(inputs(test), np.asarray(dataset.labels)[test], reference)
    calibration = TrainingImages(inputs, calibration_indices(splits.pool, 200, seed=0))
    rows = deploy_model(model, SIDE, evaluation, calibration, out / "onnx", seconds=SECONDS)
    return SimpleNamespace(
        result=result,
        model=model,
        rows={(r["runtime"], r["precision"]): r for r in rows},
        folder=out / "onnx",
        splits=splits,
        calibration=calibration,
    )


def test_export_matches_pytorch_on_any_batch(tmp_path):
    torch.manual_seed(0)
    import timm

    model = timm.create_model(FAST_MODEL, num_classes=10).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, SIDE, path)
    assert not list(tmp_path.glob("*.data"))  # weights inside the one file
    session = ort_session(path, threads=1)
    for batch in (1, 5, 70):  # dynamic batch: timing uses 1, evaluation batches of 64 and a remainder
        x = torch.randn(batch, 3, SIDE, SIDE)
        with torch.inference_mode():
            expected = model(x).numpy()
        got = ort_logits(session, x.numpy())
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4
        assert (got.argmax(1) == expected.argmax(1)).all()


def test_trained_model_is_kept_and_reloaded_exactly(trained):
    assert trained.result.test_acc > 0.9
    pytorch = trained.rows[(PYTORCH, FP32)]
    assert pytorch["test_acc"] == pytest.approx(trained.result.test_acc)  # the tested weights, not the last round's
    onnx = trained.rows[(ONNXRUNTIME, FP32)]
    assert onnx["status"] == "done"
    assert onnx["max_logit_diff"] < 1e-3 and onnx["class_agreement"] == 1.0
    assert onnx["test_acc"] == pytest.approx(pytorch["test_acc"])


def test_int8_keeps_accuracy_within_tolerance_and_shrinks_the_file(trained):
    fp32 = trained.rows[(ONNXRUNTIME, FP32)]
    for precision in (INT8_DYNAMIC, INT8_STATIC):
        row = trained.rows[(ONNXRUNTIME, precision)]
        assert row["status"] == "done", row.get("error")
        assert row["test_acc"] >= fp32["test_acc"] - INT8_TOLERANCE, precision
        assert row["size_mb"] < 0.5 * fp32["size_mb"], precision  # int8 weights: about a quarter
        assert (trained.folder / f"{precision}.onnx").stat().st_size == pytest.approx(row["size_mb"] * 2**20)
        assert 0 < row["latency_p50_ms_1t"] <= row["latency_p95_ms_1t"]
        assert 0 < row["latency_p50_ms_all"] <= row["latency_p95_ms_all"]
    assert not list(trained.folder.glob("*.prepared.onnx"))


def test_calibration_draws_only_training_images(trained):
    served = set(trained.calibration.served)
    assert len(served) == 200
    assert served <= set(int(i) for i in trained.splits.pool)
    assert not served & set(int(i) for i in trained.splits.test)
    assert not served & set(int(i) for i in trained.splits.val)
    assert trained.rows[(ONNXRUNTIME, INT8_STATIC)]["details"]["calibration_indices"] == sorted(served)


class DataDependent(nn.Module):
    """A model whose forward branches on a value of its input: torch.export cannot trace it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        if logits.sum() > 0:
            return logits
        return logits * 1.0


def test_a_model_the_exporter_cannot_handle_is_recorded_with_its_reason(trained, tmp_path):
    model = DataDependent(trained.model).eval()
    images = np.random.default_rng(0).standard_normal((4, 3, SIDE, SIDE)).astype(np.float32)
    with torch.inference_mode():
        logits = model(torch.from_numpy(images)).numpy()
    evaluation = Evaluation(images, logits.argmax(1), logits)
    rows = deploy_model(model, SIDE, evaluation, trained.calibration, tmp_path, seconds=SECONDS)
    by = {(r["runtime"], r["precision"]): r for r in rows}
    assert by[(PYTORCH, FP32)]["status"] == "done"  # PyTorch still timed
    failed = by[(ONNXRUNTIME, FP32)]
    assert failed["status"] == "failed"
    assert "data-dependent" in failed["error"] or "Could not guard" in failed["error"], failed["error"]
    assert "\x1b[" not in failed["error"]


def _run(cli, out: Path, *extra: str) -> None:
    args = ["run", "--out", out, "--models", f"{FAST_MODEL},test_efficientnet", "--image-size", "16"]
    args += [
        "--budget",
        "fixed",
        "--no-budget-control",
        "--epochs",
        "1",
        "--min-steps",
        "2",
        "--fractions",
        "0.1,0.25",
        "--seeds",
        "2",
        "--jobs",
        "1",
    ]
    code, _, err = cli(*args, "--quiet", *extra)
    assert code == 0, err


@pytest.mark.slow
def test_a_study_exports_its_best_seeds_records_a_failure_and_reports(cli, tmp_path, monkeypatch):
    """End to end: the runs at the largest size keep their weights; each model's best seed (by
    validation accuracy) is deployed; one model's export fails for real and the study goes on;
    the report shows the section, the failure and deployment.csv."""
    load = study.deploy.load_trained

    def untraceable_efficientnet(name, num_classes, data):
        model = load(name, num_classes, data)
        return DataDependent(model).eval() if name == "test_efficientnet" else model

    monkeypatch.setattr(study.deploy, "load_trained", untraceable_efficientnet)
    _run(cli, tmp_path)
    db = sqlite3.connect(tmp_path / "study.db")
    kept = {run_id for (run_id,) in db.execute("select run_id from run_weights")}
    runs = pd.read_sql("select id, model, size_value, seed, val_acc, test_acc from runs", db)
    deployed = pd.read_sql("select * from deployments", db)
    for _, g in runs[runs["size_value"] == 0.25].groupby("model"):
        best = g.sort_values(["val_acc", "seed"], ascending=[False, True]).iloc[0]
        assert set(deployed.loc[deployed["run_id"].isin(g["id"]), "run_id"]) == {best["id"]}
        assert set(g["id"]) & kept == {best["id"]}  # only the best seed's weights stay in the store
    assert len(kept) == 2
    mine = deployed[deployed["run_id"].isin(runs.loc[runs["model"] == FAST_MODEL, "id"])]
    assert set(mine["precision"]) == {FP32, INT8_DYNAMIC, INT8_STATIC} and (mine["status"] == "done").all()
    failed = deployed[deployed["status"] == "failed"]
    assert len(failed) == 1 and failed["runtime"].iloc[0] == ONNXRUNTIME
    assert (tmp_path / "deploy").is_dir()

    csv = pd.read_csv(tmp_path / "report" / "deployment.csv")
    assert list(csv.columns) == CSV_COLUMNS
    assert set(csv["arm"]) == {FAST_MODEL, "test_efficientnet"}  # test_efficientnet: its PyTorch rows
    assert len(csv[csv["arm"] == FAST_MODEL]) == 8  # 4 variants x (1 thread, all threads)
    assert (csv["dataset"] == "digits").all() and set(csv["threads"]) >= {1}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "### On a small device" in md and "could not be made" in md
    assert "figures/accuracy_vs_latency.png" in md

    # Seeds added later, deployment again: nothing exported twice; --no-deploy stores no weights.
    _run(cli, tmp_path, "--latency-budget-ms", "1000")
    assert pd.read_sql("select count(*) n from deployments", db)["n"].iloc[0] == len(deployed)
    assert "choose **" in (tmp_path / "report" / "report.md").read_text()
    _run(cli, tmp_path / "off", "--no-deploy")
    off = sqlite3.connect(tmp_path / "off" / "study.db")
    assert off.execute("select count(*) from run_weights").fetchone()[0] == 0
    assert off.execute("select count(*) from deployments").fetchone()[0] == 0
    assert "Deployment was turned off" in (tmp_path / "off" / "report" / "report.md").read_text()
