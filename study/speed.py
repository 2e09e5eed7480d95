"""How a run uses its device: choices that change speed, and results only by rounding.

- Memory format: channels-last helps convolutions on a GPU's tensor cores for most CNNs, and on
  this project's 2-core CPU at 32 px it made 10 of 11 timm models faster (MobileNetV2 1.8-1.9
  times, EfficientNet-B0 2.2, MobileViT-XXS 1.1-1.2, ResNet-50 1.05) and ResNet-18 about 10% slower
  (``benchmarks/bench_layout.py``, docs/performance.md). ``on`` (the default) trains every model
  channels-last. ``auto`` decides per model and device by measurement: a few forward/backward
  passes in each layout at the run's batch and input size, once per study where the worker has
  one (the first worker to need it measures and stores the choice; layouts round differently,
  so every worker must train in the same one for a run's result not to depend on the worker),
  else once per process. Rounding is not nothing: a plateau stop can turn it into other epochs
  and accuracies, and a timed choice between two close layouts can differ from one study to the
  next, so the default does not time.
- Compilation: ``torch.compile`` costs seconds to minutes per model, so a worker compiles each
  model once and reuses the compiled module for every later run of that model, loading each
  run's freshly initialised weights into it (same parameter objects, so no recompilation).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from study.config import CHANNELS_LAST, StudyConfig
from study.models import to_device

PROBE_STEPS = 3  # timed forward/backward passes per layout; after one untimed warm-up pass


class LayoutChoices(Protocol):
    """Where a layout decided by measurement is kept (``Store.layout_choice`` bound to a study)."""

    def __call__(self, key: str, measure: Callable[[], bool]) -> bool: ...


@dataclass(frozen=True)
class Speed:
    """Speed settings of a worker (not hyper-parameters: results do not depend on them beyond
    floating-point rounding, so they are not part of a study's fingerprint)."""

    channels_last: str = StudyConfig.channels_last  # on | off | auto
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend; tests use "eager"
    layout_choices: LayoutChoices | None = None  # the study's shared choices; None: this process's

    @classmethod
    def from_config(cls, cfg: StudyConfig, layout_choices: LayoutChoices | None = None) -> Speed:
        return cls(channels_last=cfg.channels_last, compile=cfg.compile, layout_choices=layout_choices)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed, tensor cores do the matrix work); float32
    on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def configure_device(device: torch.device) -> None:
    """Process-wide settings for fast training on ``device`` (fixed input shapes throughout)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest convolution algorithm per shape
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 leftovers outside autocast
        torch.backends.cudnn.allow_tf32 = True


_LAYOUT_CHOICE: dict[str, bool] = {}


def _process_choice(key: str, measure: Callable[[], bool]) -> bool:
    """``LayoutChoices`` kept in this process, for callers without a study (benchmarks, tests)."""
    if key not in _LAYOUT_CHOICE:
        _LAYOUT_CHOICE[key] = measure()
    return _LAYOUT_CHOICE[key]


def use_channels_last(
    setting: str,
    model_name: str,
    build: Callable[[], nn.Module],
    input_size: int,
    batch: int,
    device: torch.device,
    shared: LayoutChoices | None = None,
) -> bool:
    """Whether to train ``model_name`` in channels-last layout on ``device``.

    'on' and 'off' force it; 'auto' measures once per (model, input, batch, kind of device):
    through ``shared`` (a study's stored choices) where given, else once in this process.
    ``build`` makes a throwaway model for the measurement.
    """
    if setting not in CHANNELS_LAST:
        raise ValueError(f"channels_last={setting!r} is unknown; valid: {', '.join(CHANNELS_LAST)}")
    if setting != "auto":
        return setting == "on"
    key = f"{model_name}|{input_size}px|batch {batch}|{device.type}"
    return (shared or _process_choice)(key, lambda: channels_last_is_faster(build, input_size, batch, device))


def channels_last_is_faster(
    build: Callable[[], nn.Module], input_size: int, batch: int, device: torch.device, steps: int = PROBE_STEPS
) -> bool:
    """Whether forward and backward passes of a model from ``build`` are faster in channels-last
    layout than in the default one on ``device`` (``layout_seconds``)."""
    seconds = layout_seconds(build, input_size, batch, device, steps)
    return seconds[True] < seconds[False]


def layout_seconds(
    build: Callable[[], nn.Module], input_size: int, batch: int, device: torch.device, steps: int = PROBE_STEPS
) -> dict[bool, float]:
    """{channels_last: seconds} of one forward and backward pass of a model from ``build``, in
    each layout on ``device``: one warm-up pass each (cudnn autotuning, oneDNN kernel creation),
    then ``steps`` passes each, alternating; the fastest of each (the least disturbed by other
    work).

    Runs under a forked RNG so that the run's seeded stream is untouched.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        base = build()
        setups = {}
        for channels_last in (False, True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            x = torch.randn(batch, 3, input_size, input_size, device=device).contiguous(memory_format=fmt)
            setups[channels_last] = (to_device(copy.deepcopy(base), device, channels_last).train(), x)
        y = torch.zeros(batch, dtype=torch.long, device=device)
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(steps + 1):
            for channels_last, (model, x) in setups.items():
                _synchronize(device)
                start = time.perf_counter()
                with autocast(device):
                    loss = F.cross_entropy(model(x).float(), y)
                loss.backward()
                model.zero_grad(set_to_none=True)
                _synchronize(device)
                seconds[channels_last].append(time.perf_counter() - start)
        del setups
    return {layout: min(times[1:]) for layout, times in seconds.items()}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_COMPILED: dict[tuple, nn.Module] = {}


def prepare_model(
    fresh: nn.Module, key: tuple, device: torch.device, channels_last: bool, speed: Speed
) -> tuple[nn.Module, nn.Module]:
    """(module to train, plain module) for a freshly initialised model ``fresh``.

    Without compilation both are ``fresh`` on ``device``. With it, the first run of ``key`` in
    this process compiles; later runs get the same compiled module with ``fresh``'s weights
    loaded into it. The plain module shares the parameters and serves evaluation and state
    dicts (evaluation batches have other shapes, which would cost recompilations).
    """
    fresh = to_device(fresh, device, channels_last)
    if not speed.compile:
        return fresh, fresh
    key = (*key, str(device), channels_last, speed.compile_backend)
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = torch.compile(fresh, backend=speed.compile_backend)
        _COMPILED[key] = compiled
        return compiled, fresh
    plain = compiled._orig_mod
    plain.load_state_dict(fresh.state_dict())
    for kept, new in zip(plain.parameters(), fresh.parameters()):
        kept.requires_grad_(new.requires_grad)  # a fine-tuning mode may freeze some
    return compiled, plain.train()


def compiled_models() -> int:
    """How many compiled modules this process holds (one per model and layout)."""
    return len(_COMPILED)
