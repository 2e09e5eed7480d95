"""Cost measurements: MACs against hand counts, latency fields, one stored row per model, and
per-run peak memory and throughput recorded by a real study."""

import sqlite3
import sys

import numpy as np
import pytest
import timm
import torch
from torch import nn

from study.costs import count_macs, measure_model_costs, record_model_costs
from study.machine import PeakMemory
from study.models import count_parameters, model_size_mb
from study.store import Store
from tests.conftest import FAST_MODEL


def tiny_conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 16x16 out: 16*16 * 8 * 3*3*3 = 55,296 MACs
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2, groups=8),  # depthwise, 8x8 out: 8*8 * 8 * 3*3 = 4,608
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),  # 8 * 10 = 80
    )


def test_macs_of_a_tiny_conv_net_match_the_hand_count():
    macs, by_op = count_macs(tiny_conv_net(), 16)
    assert macs == 55_296 + 4_608 + 80
    assert by_op == {"convolution": 55_296 + 4_608, "addmm": 80}


def _hooked_macs(model: nn.Module, input_size: int) -> float:
    """Hand count from each convolution's and linear layer's real output shape."""
    total = 0.0

    def hook(module, _inputs, out):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += out.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        else:
            total += out.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, input_size, input_size))
    for h in handles:
        h.remove()
    return total


def test_macs_of_a_real_timm_model_match_a_per_layer_count():
    model = timm.create_model(FAST_MODEL, num_classes=10)
    macs, _ = count_macs(model, 32)
    assert macs == pytest.approx(_hooked_macs(model, 32))
    # plausible: every weight is used at least once per image, and at most once per input pixel
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert weights <= macs <= weights * 32 * 32


def test_macs_count_attention_products():
    """A vision transformer's attention matrix products count too (not only its linear layers)."""
    model = timm.create_model("test_vit", num_classes=10)
    macs, by_op = count_macs(model, 160)
    assert by_op.get("bmm", 0) > 0
    assert macs > _hooked_macs(model, 160)


def test_costs_of_a_real_model_fill_every_field():
    costs = measure_model_costs(FAST_MODEL, 10, 16, seconds=0.05)
    model = timm.create_model(FAST_MODEL, num_classes=10)
    assert costs.n_params == count_parameters(model)
    assert costs.size_mb == pytest.approx(model_size_mb(model))
    assert costs.macs > costs.n_params / 10
    assert 0 < costs.latency_p50_ms_1t <= costs.latency_p95_ms_1t
    assert 0 < costs.latency_p50_ms_all <= costs.latency_p95_ms_all
    assert costs.threads_all >= 1
    assert costs.details["repetitions_1t"] >= 5 and costs.details["repetitions_all"] >= 5


def test_costs_are_stored_once_per_model(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    sid = store.open_study("s", "fp", {}, {}, {}, {}, np.array([0]))
    factory = lambda name, n: tiny_conv_net()  # noqa: E731  fast; costs only need a module
    assert record_model_costs(store, sid, {"a": 16, "b": 16}, 10, factory, progress=False) == ["a", "b"]
    assert record_model_costs(store, sid, {"a": 16, "b": 16, "c": 16}, 10, factory, progress=False) == ["c"]
    rows = store.model_costs(sid)
    assert [r.model for r in rows] == ["a", "b", "c"]
    assert rows[0].macs == 55_296 + 4_608 + 80 and rows[0].input_size == 16
    # a second process that measured the same model meanwhile does not add a row
    assert not store.save_model_costs(sid, "a", {"input_size": 16, "n_params": 1, "size_mb": 0.0})
    assert len(store.model_costs(sid)) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset is Linux's /proc/self/clear_refs")
def test_peak_memory_is_measured_from_the_start_of_each_run():
    first = PeakMemory(torch.device("cpu"))
    big = np.ones(300 * 2**20, dtype=np.uint8)  # 300 MiB, touched
    first_peak = first.peak_mb()
    del big
    second = PeakMemory(torch.device("cpu"))
    assert second.reset
    assert second.peak_mb() < first_peak - 200


def test_a_study_records_costs_once_and_per_run_throughput_and_memory(cli, tmp_path):
    args = [
        "run",
        "--out",
        tmp_path,
        "--models",
        FAST_MODEL,
        "--image-size",
        "16",
        "--budget",
        "fixed",
        "--no-budget-control",
        "--epochs",
        "1",
        "--min-steps",
        "2",
        "--fractions",
        "0.1",
        "--seeds",
        "1",
        "--jobs",
        "1",
        "--quiet",
        "--no-report",
    ]
    assert cli(*args)[0] == 0
    assert cli(*args, "--seeds", "2")[0] == 0  # a new seed, same models: costs not measured again
    db = sqlite3.connect(tmp_path / "study.db")
    rows = db.execute(
        "select model, input_size, macs, latency_p50_ms_1t, latency_p50_ms_all from model_costs"
    ).fetchall()
    assert len(rows) == 1 and rows[0][0] == FAST_MODEL and rows[0][1] == 16 and all(v > 0 for v in rows[0][2:])
    runs = db.execute("select images_per_second, peak_memory_mb from runs where status = 'done'").fetchall()
    assert len(runs) == 2 and all(ips > 0 and 0 < mb < 64 * 1024 for ips, mb in runs)
    assert cli("run", "--out", tmp_path / "other", *args[3:], "--no-costs")[0] == 0
    assert (
        sqlite3.connect(tmp_path / "other" / "study.db").execute("select count(*) from model_costs").fetchone()[0] == 0
    )
