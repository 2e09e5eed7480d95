"""What a model costs, measured on the study side (it needs torch) for the reports.

Once per model and study, before any training (``record_model_costs``, skipped for models
already in the store): multiply-accumulates per image at the study's input size, parameters,
weight size, and CPU inference latency at batch 1 with one thread and with all of them, stored
in the ``model_costs`` table. Per run: ``study.machine.PeakMemory`` measures a run's peak memory from its
start (training throughput is timed by the training loop itself).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

LATENCY_SECONDS = 1.0  # timing budget per thread setting: a few seconds per model in all
LATENCY_MIN_REPS = 30  # enough for a 95th percentile, unless that takes over 10 x LATENCY_SECONDS
LATENCY_FLOOR_REPS = 5
LATENCY_MAX_REPS = 500
LATENCY_WARMUP = 5


@dataclass
class ModelCosts:
    """One row of ``model_costs``: latencies in milliseconds, CPU, batch 1, float32."""

    model: str
    input_size: int
    n_params: int
    macs: float
    size_mb: float
    latency_p50_ms_1t: float
    latency_p95_ms_1t: float
    latency_p50_ms_all: float
    latency_p95_ms_all: float
    threads_all: int
    details: dict = field(default_factory=dict)


def count_macs(model: nn.Module, input_size: int) -> tuple[float, dict[str, float]]:
    """Multiply-accumulates of one forward pass on one ``input_size`` image, in total and by
    operator.

    torch's own FLOP counter works on the operators the model really calls, so it sees every
    convolution (grouped and depthwise ones included), every matrix product (linear layers and
    attention's products alike) and fused attention; a MAC is two of its FLOPs. Element-wise
    work (activations, normalisation) is not counted, the usual convention. Preferred to thop,
    which hooks modules and misses functional products such as MobileViT's attention, and to
    fvcore, a traced-graph counter and an extra dependency. Attention runs in its plain (math)
    form here: the counter has no formula for the CPU's fused attention kernel.
    """
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(torch.zeros(1, 3, input_size, input_size))
    by_op = {
        getattr(op, "__name__", str(op)): flops / 2 for op, flops in counter.get_flop_counts().get("Global", {}).items()
    }
    return counter.get_total_flops() / 2, by_op


def inference_latency_ms(
    model: nn.Module, input_size: int, threads: int, seconds: float | None = None
) -> tuple[float, float, int]:
    """(p50, p95, repetitions): milliseconds per forward pass of one image on the CPU with
    ``threads`` torch threads, after a warm-up, repeated for about ``seconds`` (default
    LATENCY_SECONDS, read at call time so that tests can shorten it; at least LATENCY_MIN_REPS
    times)."""
    seconds = LATENCY_SECONDS if seconds is None else seconds
    model = model.eval()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.rand(1, 3, input_size, input_size)
        times: list[float] = []
        with torch.inference_mode():
            for _ in range(LATENCY_WARMUP):
                model(x)
            start = time.perf_counter()
            while len(times) < LATENCY_MAX_REPS and _more(len(times), time.perf_counter() - start, seconds):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    p50, p95 = np.percentile(np.array(times) * 1000, [50, 95])
    return float(p50), float(p95), len(times)


def _more(reps: int, elapsed: float, seconds: float) -> bool:
    """Whether to time another pass: until ``seconds`` and LATENCY_MIN_REPS passes are both
    reached, but past ten times ``seconds`` only up to LATENCY_FLOOR_REPS passes (a slow model,
    or a machine busy with other work, where multi-thread passes can take a hundred times
    longer)."""
    if reps < LATENCY_FLOOR_REPS:
        return True
    if elapsed >= 10 * seconds:
        return False
    return reps < LATENCY_MIN_REPS or elapsed < seconds


def measure_model_costs(
    model_name: str,
    num_classes: int,
    input_size: int,
    factory: Callable[[str, int], nn.Module] | None = None,
    seconds: float | None = None,
) -> ModelCosts:
    """Measure one model on the CPU (a freshly initialised one: costs do not depend on weights)."""
    from study.machine import available_cores
    from study.models import count_parameters, create_model, model_size_mb

    model = (factory or create_model)(model_name, num_classes).cpu().eval()
    macs, by_op = count_macs(model, input_size)
    p50_1, p95_1, reps_1 = inference_latency_ms(model, input_size, 1, seconds)
    threads_all = available_cores()
    p50_all, p95_all, reps_all = inference_latency_ms(model, input_size, threads_all, seconds)
    details = {
        "device": "cpu",
        "dtype": "float32",
        "batch": 1,
        "repetitions_1t": reps_1,
        "repetitions_all": reps_all,
        "warmup": LATENCY_WARMUP,
        "macs_by_op": by_op,
        "macs_counter": "torch.utils.flop_counter.FlopCounterMode (MACs = FLOPs / 2)",
        "processor": platform.processor() or platform.machine(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # others' work skews latency
        "torch": torch.__version__,
    }
    return ModelCosts(
        model_name,
        input_size,
        count_parameters(model),
        macs,
        model_size_mb(model),
        p50_1,
        p95_1,
        p50_all,
        p95_all,
        threads_all,
        details,
    )


def record_model_costs(
    store,
    study_id: int,
    input_sizes: dict[str, int] | list[tuple[str, int]],
    num_classes: int,
    factory: Callable[[str, int], nn.Module] | None = None,
    progress: bool = True,
) -> list[str]:
    """Measure and store the costs of each model at each input side (``input_sizes``: model ->
    side, or (model, side) pairs when arms train one model at several sides) that has none
    stored for the study yet.

    Called by the main process before the runs are dispatched, so no training competes with
    the latency measurement. Returns the models measured by this call.
    """
    stored = {(row.model, row.input_size) for row in store.model_costs(study_id)}
    pairs = input_sizes.items() if isinstance(input_sizes, dict) else input_sizes
    measured = []
    for name, input_size in dict.fromkeys(pairs):
        if (name, input_size) in stored:
            continue
        if progress:
            print(f"measuring costs of {name} at {input_size} px (MACs, parameters, CPU latency)", file=sys.stderr)
        costs = asdict(measure_model_costs(name, num_classes, input_size, factory))
        if store.save_model_costs(study_id, costs.pop("model"), costs):
            measured.append(name)
    return measured


def record_study_costs(ctx, progress: bool = True) -> list[str]:
    """``record_model_costs`` for every model of a study (a ``StudyContext``), at each size its
    arms train it at: costs are per (model, input size)."""
    from study.models import input_size_for

    cfg = ctx.cfg
    sizes = [
        (arm.model, input_size_for(arm.model, arm.train(cfg.train).input_size, cfg.data.image_size))
        for arm in cfg.study_arms
    ]
    return record_model_costs(ctx.store, ctx.study_id, sizes, ctx.dataset.num_classes, progress=progress)
