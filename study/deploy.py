"""Deployment: each trained model as it would ship, exported, quantized and timed on the CPU.

For the runs chosen (by default each model's best seed, by validation accuracy, at the largest
training-set size; ``deploy.runs = "all"`` for every run) the kept weights (``run_weights``,
written by the worker that trained the run) are loaded into the model, which is

1. exported to ONNX with ``torch.onnx.export`` (the torch.export-based exporter, torch's
   default since 2.9; the TorchScript one is deprecated) and checked against PyTorch on the
   study's test images: largest absolute logit difference and share of equal predicted classes;
2. quantized to int8 with ONNX Runtime's tools: dynamically (weights int8, activations
   quantized on the fly) and statically (QDQ, per channel), calibrated on a few hundred images
   of the run's own training subset, never on test images;
3. timed with ONNX Runtime on the CPU at batch 1 with one thread and with all of them (p50 and
   p95 after a warm-up, as ``study.costs`` times PyTorch), next to PyTorch eager on the same
   weights at the same moment; each variant's file size and test accuracy are measured.

Each variant is one row of the ``deployments`` table, stored once per (run, runtime, precision).
A model that cannot be exported, or a variant that cannot be quantized, is recorded as failed
with the tool's reason, and the study goes on. Runs in the main process after the runs (like
the costs, before them), so no training competes with the timing. The ONNX files are written
under ``<out>/deploy/``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import re
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from study import costs
from study.config import StudyConfig, TrainConfig, from_dict
from study.store import DONE, RunRow, Store

INSTALL_HINT = "pip install onnx onnxruntime onnxscript"  # in `pip install -e .`; lost only to a partial install
PYTORCH, ONNXRUNTIME = "pytorch", "onnxruntime"
FP32, INT8_DYNAMIC, INT8_STATIC = "fp32", "int8-dynamic", "int8-static"
VARIANTS = ((PYTORCH, FP32), (ONNXRUNTIME, FP32), (ONNXRUNTIME, INT8_DYNAMIC), (ONNXRUNTIME, INT8_STATIC))
EVAL_BATCH = 64
OPSET = 18
CALIBRATION_BATCH = 32
NO_WEIGHTS = (
    "nothing to deploy: no finished run of this study kept its weights (trained with --no-deploy, or before "
    "deployment existed); a new study (--name) keeps them"
)


def missing_dependency() -> str | None:
    """Why deployment cannot run here (a package that does not import), or None."""
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            return f"{name} is not installed ({INSTALL_HINT})"
    return None


def largest_size(cfg: StudyConfig) -> tuple[str, float]:
    """The study's largest training-set size, as (kind, value)."""
    return max(cfg.sizes, key=lambda size: size[1])


def keeps_weights(cfg: StudyConfig, run: RunRow) -> bool:
    """Whether a finished run's weights are kept for export: every run with ``deploy.runs = "all"``,
    else the runs at the study's largest size (whose best seed is exported)."""
    if not cfg.deploy.enabled:
        return False
    return cfg.deploy.runs == "all" or (run.size_kind, run.size_value) == largest_size(cfg)


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as the bytes of a safetensors file (CPU, contiguous)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def load_trained(model_name: str, num_classes: int, data: bytes) -> nn.Module:
    """The timm model with the kept weights, in eval mode on the CPU."""
    import timm
    from safetensors.torch import load

    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    model.load_state_dict(load(data))
    return model.eval()


def runs_to_deploy(store: Store, study_id: int, which: str = "best") -> list[RunRow]:
    """The finished runs with kept weights to export: all of them, or per arm the best seed
    (highest validation accuracy, then the lowest seed) at the largest size with kept weights.
    Chosen on validation accuracy so that no test image decides which model ships."""
    kept = store.runs_with_weights(study_id)
    runs = [r for r in store.runs(study_id, DONE) if r.id in kept]
    if which == "all":
        return sorted(runs, key=lambda r: (r.arm or r.model, r.size_value, r.seed))
    chosen = []
    for arm in sorted({r.arm or r.model for r in runs}):
        mine = [r for r in runs if (r.arm or r.model) == arm]
        largest = max(r.size_value for r in mine)
        at_largest = [r for r in mine if r.size_value == largest]
        chosen.append(min(at_largest, key=lambda r: (-(r.val_acc or 0.0), r.seed)))
    return chosen


# -- export and quantization ----------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantizer's progress lines and warnings (their failures still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model: nn.Module, input_size: int, path: Path) -> None:
    """Export ``model`` (float input of shape (batch, 3, side, side), any batch) to one ONNX file.

    The TorchScript exporter (``dynamo=False``) goes first: it exports a CNN in 0.2-1 s, against
    5-18 s for the torch.export one, seconds that counted against the default study's 5 minutes.
    Tracing records one path through the forward, so any tracer warning (a tensor turned into a
    Python value: a branch or a shape the trace may have frozen) counts as a failure, and a
    failure (or a torch that has dropped the old exporter) falls back to the torch.export exporter
    (``dynamo=True``), which refuses data-dependent forwards outright. MobileViT and ViTs take
    that path. Weights sit inside the file, so its size is the model's.
    """
    model = model.eval()
    example = (torch.zeros(2, 3, input_size, input_size),)
    names = {"input_names": ["input"], "output_names": ["logits"], "opset_version": OPSET, "verbose": False}
    dynamic = {"input": {0: "batch"}}
    with _quiet():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", torch.jit.TracerWarning)
                torch.onnx.export(model, example, str(path), dynamo=False, dynamic_axes=dynamic, **names)
            return
        except Exception:  # any doubt of the old exporter: the supported one decides
            path.unlink(missing_ok=True)
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(
            model, example, str(path), dynamo=True, external_data=False, dynamic_shapes=({0: batch},), **names
        )


class TrainingImages:
    """ONNX Runtime's calibration reader over model inputs of training images: it serves
    ``indices`` (dataset indices, drawn from the run's training subset) in batches and records
    every index it served, so a test can check that no test image calibrates."""

    def __init__(self, inputs, indices: np.ndarray, input_name: str = "input", batch: int = CALIBRATION_BATCH):
        self._inputs, self._name, self._batch = inputs, input_name, batch
        self._indices = np.asarray(indices)
        self.served: list[int] = []
        self._position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= len(self._indices):
            return None
        chunk = self._indices[self._position : self._position + self._batch]
        self._position += len(chunk)
        self.served.extend(int(i) for i in chunk)
        return {self._name: self._inputs(chunk)}

    def rewind(self) -> None:
        self._position = 0


def calibration_indices(train_indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` of a run's training indices, drawn at random with ``seed`` (sorted)."""
    train_indices = np.asarray(train_indices)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(train_indices, size=min(n, len(train_indices)), replace=False))


def quantize(fp32: Path, precision: str, calibration: TrainingImages | None = None) -> Path:
    """Quantize the ONNX model at ``fp32`` to int8 (``INT8_DYNAMIC`` or ``INT8_STATIC``, the
    latter calibrated by ``calibration``); returns the new file, beside the original.

    ONNX Runtime's pre-processing (shape inference and graph optimisation) runs first, as its
    documentation advises; static quantization writes QDQ nodes with per-channel weight scales,
    the format ONNX Runtime's CPU kernels fuse into int8 operators."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = fp32.with_name(fp32.stem + ".prepared.onnx")
    out = fp32.with_name(f"{precision}.onnx")
    with _quiet():
        if not prepared.exists():
            quant_pre_process(str(fp32), str(prepared))
        if precision == INT8_DYNAMIC:
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)
        elif precision == INT8_STATIC:
            if calibration is None:
                raise ValueError("static quantization needs calibration images")
            calibration.rewind()
            quantize_static(
                str(prepared),
                str(out),
                calibration,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
        else:
            raise ValueError(f"unknown precision {precision!r}")
    return out


# -- measuring ------------------------------------------------------------------------------------


def ort_session(path: Path, threads: int):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(session, inputs: np.ndarray) -> np.ndarray:
    """Logits of ``inputs`` (float32 (N, 3, S, S)), in batches of EVAL_BATCH."""
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: inputs[i : i + EVAL_BATCH]})[0] for i in range(0, len(inputs), EVAL_BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def ort_latency_ms(
    path: Path, image: np.ndarray, threads: int, seconds: float | None = None
) -> tuple[float, float, int]:
    """(p50, p95, repetitions): milliseconds per ONNX Runtime call on one image (1, 3, S, S)
    with ``threads`` threads, after a warm-up, for about ``seconds`` (``costs.LATENCY_SECONDS``
    by default), with the same repetition rule as PyTorch's timing in ``study.costs``."""
    seconds = costs.LATENCY_SECONDS if seconds is None else seconds
    session = ort_session(path, threads)
    feed = {session.get_inputs()[0].name: image}
    for _ in range(costs.LATENCY_WARMUP):
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < costs.LATENCY_MAX_REPS and costs._more(len(times), time.perf_counter() - start, seconds):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    p50, p95 = np.percentile(np.array(times) * 1000, [50, 95])
    return float(p50), float(p95), len(times)


def _reason(exc: BaseException) -> str:
    """The tool's reason in a few lines: the exception and the cause it wraps, colour codes removed."""
    parts = [f"{type(exc).__name__}: {exc}"]
    if exc.__cause__ is not None:
        parts.insert(0, f"{type(exc.__cause__).__name__}: {exc.__cause__}")
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(parts))
    return text.strip()[:4000]


@dataclass
class Evaluation:
    """What the deployment of one run compares against: the test images as model inputs, their
    labels, and the PyTorch model's logits on them."""

    inputs: np.ndarray
    labels: np.ndarray
    logits: np.ndarray


def _compare(logits: np.ndarray, reference: Evaluation) -> dict[str, float]:
    predicted = logits.argmax(1)
    return {
        "test_acc": float((predicted == reference.labels).mean()),
        "max_logit_diff": float(np.abs(logits - reference.logits).max()),
        "class_agreement": float((predicted == reference.logits.argmax(1)).mean()),
    }


def deploy_model(
    model: nn.Module,
    input_size: int,
    evaluation: Evaluation,
    calibration: TrainingImages,
    folder: Path,
    seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Every variant of one trained model (``VARIANTS``): one dict per variant with runtime,
    precision, status and the measured fields of a ``deployments`` row (error on failure).

    ``folder`` receives ``fp32.onnx``, ``int8-dynamic.onnx`` and ``int8-static.onnx``."""
    from study.machine import available_cores
    from study.models import model_size_mb

    folder.mkdir(parents=True, exist_ok=True)
    threads_all = available_cores()
    image = evaluation.inputs[:1]
    common = {"threads_all": threads_all}
    rows: list[dict[str, Any]] = []

    p50_1, p95_1, reps_1 = costs.inference_latency_ms(model, input_size, 1, seconds)
    p50_a, p95_a, reps_a = costs.inference_latency_ms(model, input_size, threads_all, seconds)
    rows.append(
        {
            "runtime": PYTORCH,
            "precision": FP32,
            "status": "done",
            "size_mb": model_size_mb(model),
            "latency_p50_ms_1t": p50_1,
            "latency_p95_ms_1t": p95_1,
            "latency_p50_ms_all": p50_a,
            "latency_p95_ms_all": p95_a,
            **_compare(evaluation.logits, evaluation),
            **common,
            "details": _details(reps_1, reps_a, note="eager mode, torch.inference_mode"),
        }
    )

    fp32 = folder / f"{FP32}.onnx"
    try:
        export_onnx(model, input_size, fp32)
    except Exception as exc:  # the exporter cannot handle the model: recorded, the study goes on
        rows.append({"runtime": ONNXRUNTIME, "precision": FP32, "status": "failed", "error": _reason(exc), **common})
        return rows
    paths: dict[str, Path | BaseException] = {FP32: fp32}
    for precision in (INT8_DYNAMIC, INT8_STATIC):
        try:
            paths[precision] = quantize(fp32, precision, calibration)
        except Exception as exc:
            paths[precision] = exc
    fp32.with_name(fp32.stem + ".prepared.onnx").unlink(missing_ok=True)  # the quantizer's intermediate
    for precision, path in paths.items():
        if isinstance(path, BaseException):
            rows.append(
                {"runtime": ONNXRUNTIME, "precision": precision, "status": "failed", "error": _reason(path), **common}
            )
            continue
        try:
            logits = ort_logits(ort_session(path, threads_all), evaluation.inputs)
            p50_1, p95_1, reps_1 = ort_latency_ms(path, image, 1, seconds)
            p50_a, p95_a, reps_a = ort_latency_ms(path, image, threads_all, seconds)
        except Exception as exc:  # a quantized graph ONNX Runtime cannot run
            rows.append(
                {"runtime": ONNXRUNTIME, "precision": precision, "status": "failed", "error": _reason(exc), **common}
            )
            continue
        details = _details(reps_1, reps_a, file=str(path))
        if precision == INT8_STATIC:
            details["calibration_indices"] = sorted(set(calibration.served))  # dataset indices: training images
        rows.append(
            {
                "runtime": ONNXRUNTIME,
                "precision": precision,
                "status": "done",
                "size_mb": path.stat().st_size / 2**20,
                "latency_p50_ms_1t": p50_1,
                "latency_p95_ms_1t": p95_1,
                "latency_p50_ms_all": p50_a,
                "latency_p95_ms_all": p95_a,
                **_compare(logits, evaluation),
                **common,
                "details": details,
            }
        )
    return rows


def _details(reps_1: int, reps_all: int, **extra: Any) -> dict[str, Any]:
    import onnxruntime

    return {
        "batch": 1,
        "device": "cpu",
        "warmup": costs.LATENCY_WARMUP,
        "repetitions_1t": reps_1,
        "repetitions_all": reps_all,
        "processor": platform.processor() or platform.machine(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # others' work skews latency
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": OPSET,
        **extra,
    }


# -- a study's deployment -------------------------------------------------------------------------


def deploy_study(ctx, progress: bool = True, seconds: float | None = None) -> list[str]:
    """Export, quantize and time the chosen runs of a study (a ``StudyContext``) that have no
    deployment stored yet; returns one line per run (or why nothing was done)."""
    cfg, store, sid = ctx.cfg, ctx.store, ctx.study_id
    missing = missing_dependency()
    if missing:
        return [f"deployment skipped: {missing}"]
    done_before = {d.run_id for d in store.deployments(sid)}
    candidates = runs_to_deploy(store, sid, cfg.deploy.runs)
    if not candidates:
        return [NO_WEIGHTS]
    chosen = [r for r in candidates if r.id not in done_before]
    lines = []
    for run in chosen:
        if progress:
            print(f"deploying {run.cell_key}: ONNX export, int8 quantization, CPU timing", file=sys.stderr)
        try:
            rows = _deploy_run(ctx, run, seconds)
        except Exception as exc:  # loading or evaluating the model failed: recorded like an export failure
            rows = [
                {
                    "runtime": ONNXRUNTIME,
                    "precision": FP32,
                    "status": "failed",
                    "error": _reason(exc) + "\n" + traceback.format_exc(limit=3),
                }
            ]
        for row in rows:
            store.save_deployment(sid, run.id, row.pop("runtime"), row.pop("precision"), row)
        failed = [r for r in rows if r["status"] == "failed"]
        lines.append(
            f"deployed {run.cell_key}: {len(rows) - len(failed)} variant(s) measured"
            + (f", {len(failed)} failed: {failed[0]['error'].splitlines()[0]}" if failed else "")
        )
    return lines


def _deploy_run(ctx, run: RunRow, seconds: float | None) -> list[dict[str, Any]]:
    from study.augment import to_model_input
    from study.models import input_size_for, normalization
    from study.store import Cell

    cfg, dataset = ctx.cfg, ctx.dataset
    hp = from_dict(TrainConfig, dict(run.hparams or {}), "train.") if run.hparams else cfg.train.resolved(run.model)
    model = load_trained(run.model, dataset.num_classes, ctx.store.weights(run.id))
    input_size = input_size_for(run.model, hp.input_size, cfg.data.image_size)
    mean, std = (torch.tensor(v) for v in normalization(model, hp.normalization))
    with warnings.catch_warnings():  # a read-only memmap is only ever read
        warnings.simplefilter("ignore", UserWarning)
        images = torch.from_numpy(np.ascontiguousarray(dataset.images))

    def inputs(indices: np.ndarray) -> np.ndarray:
        batch = images.index_select(0, torch.as_tensor(np.asarray(indices), dtype=torch.long))
        return to_model_input(batch, input_size, mean, std).numpy()

    test = np.asarray(ctx.splits_for(run.seed).test)
    test_inputs = inputs(test)
    with torch.inference_mode():
        reference = torch.cat(
            [model(torch.from_numpy(test_inputs[i : i + EVAL_BATCH])) for i in range(0, len(test), EVAL_BATCH)]
        )
    evaluation = Evaluation(test_inputs, np.asarray(dataset.labels)[test], reference.numpy())
    train = ctx.train_indices(Cell(run.model, run.size_kind, run.size_value, run.seed))
    calibration = TrainingImages(inputs, calibration_indices(train, cfg.deploy.calibration_images, run.seed))
    folder = Path(cfg.out) / "deploy" / _slug(run.cell_key)
    rows = deploy_model(model, input_size, evaluation, calibration, folder, seconds)
    for row in rows:
        row["details"] = {**(row.get("details") or {}), "input_size": input_size}
    return rows


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")
