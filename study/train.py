"""One training run: subset indices + model name + hyper-parameters + seed + device ->
history, test metrics, predictions and timings.

The images a run uses live in one uint8 tensor on the training device, and a batch is an index
slice of it; or, when they exceed the worker's memory budget, batches are read from the cache
file ahead of the loop (``study/images.py``). Either way a batch is augmented, resized and
normalised on the device. There is no DataLoader and no per-image Python work in the loop.
The loop itself is ``TrainLoop``, so that the benchmark (``benchmarks/bench_train.py``) times
exactly what a study runs. On a GPU the loop never waits for the host: batch orders go to the
device an epoch at a time and metrics stay on the device until the epoch ends.

Budget policy (``TrainConfig.budget``). An epoch is one pass over the run's subset, or as many
passes as give at least ``min_steps / epochs`` optimiser steps when the subset is small, so tiny
fractions are not starved of updates. Validation follows each epoch; the weights tested are the
last epoch's under the plateau budget and the best validation epoch's under the fixed one.

- ``plateau`` (the default): schedule-free AdamW (Defazio et al. 2024, the ``schedulefree``
  package) after a linear warm-up, with no schedule that depends on a planned end, so the run can
  stop whenever it has converged: once validation accuracy has not gained ``min_gain`` points for
  ``patience`` epochs, nor for as many epochs as it took to reach its last gain (``Plateau``).
  Validation evaluates the optimiser's averaged weights, with batch-norm statistics recomputed for
  them. A run that reaches ``max_steps`` first stops there as *capped*.
- ``fixed``: ``epochs`` epochs of AdamW on a warm-up + cosine schedule (``patience`` > 0 may stop
  it early).

The convergence control (``control=True``): after the run has stopped on its plateau, it trains
as many steps again and records the validation and test accuracy it would then have reported
(``RunResult.control``), without changing the run's own result.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from study.augment import BatchAugment, to_model_input
from study.config import TrainConfig
from study.errors import DivergedError
from study.images import BatchStream, ImageSource, RunData
from study.images import TrainData as TrainData  # where tests and benchmarks have always found it
from study.machine import PeakMemory
from study.models import count_parameters, create_model, input_size_for, normalization
from study.optim import is_schedule_free, make_optimizer, schedule
from study.plateau import Kept, Plateau
from study.speed import Speed, autocast, configure_device, prepare_model, use_channels_last
from study.store.schema import flips

EVAL_BATCH = 256
# Images whose batch-norm statistics averaged weights are evaluated with: recomputed every epoch, so
# few (128 cost about a tenth of a 20-step epoch at 32 px); enough for a mean and variance per channel.
CALIBRATION_IMAGES = 128


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    images_seen: int


@dataclass
class RunResult:
    history: list[EpochStats]
    best_epoch: int
    val_acc: float
    test_acc: float
    test_loss: float
    test_f1: float
    predictions: np.ndarray  # predicted class per test image, in the order of the test indices
    train_seconds: float  # wall time of training, validation included
    images_per_second: float  # training images per second of optimiser steps
    n_params: int
    peak_memory_mb: float
    device: str
    epochs_run: int = 0
    stop: str = "epochs"  # plateau | capped (plateau budget), epochs | patience (fixed budget)
    steps: int = 0  # optimiser steps the run took
    control: dict | None = None  # the convergence control: val_acc, test_acc, gained, lost, steps, best_epoch, seconds
    extra: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)  # the tested (best round's) state dict, kept for export


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without it is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from study.errors import UserError

        raise UserError("device='cuda' was asked for but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


class BatchOrder:
    """An endless stream of equal-size index batches over successive seeded permutations of
    ``range(n)``.

    A stream rather than per-epoch splitting, so no batch of one (which BatchNorm refuses)
    appears at an epoch's end. Drawn on the CPU, so a seed gives the same order on every device;
    handed to the device many steps at a time, so the loop does not wait for a copy each step.
    """

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch = n, batch
        self._generator = torch.Generator().manual_seed(seed)
        self._buffer = torch.empty(0, dtype=torch.long)

    def take(self, steps: int, device: torch.device) -> torch.Tensor:
        """The next ``steps`` batches as a (steps, batch) tensor of positions on ``device``."""
        need = steps * self.batch
        parts, have = [self._buffer], len(self._buffer)
        while have < need:
            parts.append(torch.randperm(self.n, generator=self._generator))
            have += self.n
        flat = torch.cat(parts)
        self._buffer = flat[need:]
        order = flat[:need].view(steps, self.batch)
        if device.type == "cuda":
            return order.pin_memory().to(device, non_blocking=True)
        return order.to(device)


@torch.inference_mode()
def evaluate(
    model,
    data: RunData,
    indices: np.ndarray | torch.Tensor,
    input_size: int,
    mean,
    std,
    device: torch.device,
    channels_last: bool | None = None,
) -> tuple[float, float, np.ndarray]:
    """(loss, accuracy, predictions) of ``model`` on ``data`` at ``indices``, without augmentation.

    Loss and predictions stay on the device until the end: one host synchronisation per call.
    ``channels_last`` None means the device's default (CUDA yes, CPU no).
    """
    model.eval()
    if isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    total_loss, preds = torch.zeros((), device=device), []
    for images, labels in data.eval_batches(indices, EVAL_BATCH):
        x = to_model_input(images, input_size, mean, std, channels_last=channels_last)
        with autocast(device):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum")
        preds.append(logits.argmax(1))
    pred = torch.cat(preds).cpu().numpy() if preds else np.zeros(0, np.int64)
    labels = data.labels_of(indices)
    n = max(1, len(indices))
    return total_loss.item() / n, float((pred == labels).mean()) if len(pred) else float("nan"), pred


@dataclass
class TrainLoop:
    """The hot loop of one run: batches of the run's images (index slices of the resident ones,
    or read ahead from the cache), augmented and normalised on the device, then forward,
    backward and an optimiser step.

    ``train_run`` drives it an epoch at a time; ``benchmarks/bench_train.py`` times ``run``
    against ``step`` on one ready batch, which is the model's own limit.
    """

    model: nn.Module  # what trains: compiled when asked
    plain: nn.Module  # the same parameters, uncompiled: evaluation and state dicts
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: RunData
    train_idx: torch.Tensor  # dataset indices of the run's subset, on the device
    order: BatchOrder
    batches: BatchStream  # the batches ``order`` picks, in its order
    augment: BatchAugment
    aug_gen: torch.Generator
    mean: torch.Tensor
    std: torch.Tensor
    input_size: int
    channels_last: bool
    label_smoothing: float
    device: torch.device
    steps_per_epoch: int
    epochs: int
    calibration: np.ndarray  # dataset indices whose batch-norm statistics the averaged weights use

    @property
    def batch(self) -> int:
        return self.order.batch

    @property
    def lr(self) -> float:
        """The learning rate of the last step (a schedule-free optimiser's includes its warm-up)."""
        group = self.optimizer.param_groups[0]
        return float(group.get("scheduled_lr", group["lr"]))

    @contextlib.contextmanager
    def averaged(self):
        """The weights to evaluate and keep: a schedule-free optimiser's averaged weights, their
        batch-norm statistics recomputed (the running ones were gathered at other weights), or
        the trained weights as they are."""
        if not is_schedule_free(self.optimizer):
            yield
            return
        self.optimizer.eval()
        try:
            self._recompute_batch_norm()
            yield
        finally:
            self.optimizer.train()

    @torch.no_grad()
    def _recompute_batch_norm(self) -> None:
        """Batch-norm running statistics as the cumulative average over ``calibration``'s images,
        unaugmented (as they are evaluated). Frozen layers (timm's FrozenBatchNorm2d) keep theirs."""
        layers = [m for m in self.plain.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        layers = [m for m in layers if m.track_running_stats]
        if not layers:
            return
        momenta = [m.momentum for m in layers]
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # None: a cumulative average over the batches below
        self.plain.train()
        for images, _ in self.data.eval_batches(self.calibration, EVAL_BATCH):
            x = to_model_input(images, self.input_size, self.mean, self.std, channels_last=self.channels_last)
            with autocast(self.device):
                self.plain(x)
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        self.plain.eval()

    def batch_at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input and labels of the subset's images at ``positions``, augmented
        (resident data only: the benchmark's view of one batch)."""
        idx = self.train_idx[positions]
        return self.model_input(self.data.batch(idx)), self.data.labels[idx]

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 batch augmented, resized and normalised for the model."""
        return to_model_input(
            images, self.input_size, self.mean, self.std, self.augment, self.aug_gen, self.channels_last
        )

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and optimiser step on a ready batch; returns (loss, logits), detached."""
        with autocast(self.device):
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), logits.detach()

    def run(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``steps`` steps on the run's batch stream. Returns the summed loss and the number of
        correct predictions as device tensors: reading them is the only synchronisation."""
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for images, y in self.batches.take(steps):
            loss, logits = self.step(self.model_input(images), y)
            loss_sum += loss * len(y)
            correct += (logits.argmax(1) == y).sum()
        return loss_sum, correct

    def close(self) -> None:
        """Stop reading batches ahead (streamed data)."""
        self.batches.close()


def build_loop(
    data: RunData,
    train_idx: np.ndarray,
    model_name: str,
    hp: TrainConfig,
    seed: int,
    device: torch.device,
    model_factory: Callable[[str, int], torch.nn.Module] | None = None,
    speed: Speed | None = None,
) -> TrainLoop:
    """A freshly initialised model and everything its training loop needs.

    ``seed`` fixes the initialisation, the batch order and the augmentation stream.
    """
    speed = speed or Speed()
    configure_device(device)
    factory = model_factory or (lambda name, num_classes: create_model(name, num_classes, hp))
    input_size = input_size_for(model_name, hp.input_size, data.image_size)
    batch, steps_per_epoch, epochs = hp.plan(len(train_idx))
    channels_last = use_channels_last(
        speed.channels_last,
        model_name,
        lambda: factory(model_name, data.num_classes),
        input_size,
        batch,
        device,
        speed.layout_choices,
    )
    # A fixed sample of the subset, for the batch-norm statistics of averaged weights.
    calibration = np.asarray(train_idx)[np.random.default_rng(seed).permutation(len(train_idx))[:CALIBRATION_IMAGES]]
    torch.manual_seed(seed)
    model, plain = prepare_model(
        factory(model_name, data.num_classes),
        # Arms of one model may freeze different parts (frozen BatchNorm): compiled once per mode.
        (model_name, data.num_classes, hp.finetune, hp.freeze_stages),
        device,
        channels_last,
        speed,
    )
    mean_t, std_t = (torch.tensor(v, device=device) for v in normalization(plain, hp.normalization))
    optimizer = make_optimizer(plain, hp)
    order = BatchOrder(len(train_idx), batch, seed)
    return TrainLoop(
        model=model,
        plain=plain,
        optimizer=optimizer,
        scheduler=schedule(optimizer, steps_per_epoch * epochs),
        data=data,
        train_idx=torch.as_tensor(np.asarray(train_idx), dtype=torch.long).to(device),
        order=order,
        batches=data.train_batches(train_idx, order, device),
        augment=BatchAugment(hp.augment, hp.augment_strength, hflip=data.hflip),
        aug_gen=torch.Generator(device=device).manual_seed(seed),
        mean=mean_t,
        std=std_t,
        input_size=input_size,
        channels_last=channels_last,
        label_smoothing=hp.label_smoothing,
        device=device,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        calibration=np.sort(calibration),
    )


def train_run(
    data: RunData | ImageSource,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    model_name: str,
    hp: TrainConfig,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
    model_factory: Callable[[str, int], torch.nn.Module] | None = None,
    speed: Speed | None = None,
    control: bool = False,
) -> RunResult:
    """Train ``model_name`` on ``data[train_idx]``, validate every epoch on ``val_idx`` and test
    the epoch it keeps (``Kept``) on ``test_idx``. ``data`` is the run's images, or a worker's ``ImageSource``
    that picks them (resident when they fit its memory budget, else streamed).

    ``seed`` fixes the initialisation, the batch order and the augmentation stream. ``on_epoch``
    is called after each epoch's validation (progress, heartbeats, Optuna pruning: it may raise
    to stop the run). ``speed`` chooses layout and compilation (default: ``Speed()``). ``control``
    continues a run that stopped on its plateau for as many steps again (``RunResult.control``). Raises
    DivergedError when the training loss becomes non-finite.
    """
    memory = PeakMemory(device)
    if isinstance(data, ImageSource):  # a worker's cache: this run's images, resident or streamed
        data = data.for_run(train_idx, val_idx, test_idx)
    loop = build_loop(data, train_idx, model_name, hp, seed, device, model_factory, speed)
    try:
        return _train(loop, data, val_idx, test_idx, hp, device, memory, on_epoch, control)
    finally:
        loop.close()


def _train(
    loop: TrainLoop, data: RunData, val_idx, test_idx, hp: TrainConfig, device, memory, on_epoch, control: bool
) -> RunResult:
    """``train_run``'s epochs, validation and test, on a built loop (which the caller closes)."""
    val_t, test_t = np.asarray(val_idx), np.asarray(test_idx)
    evaluation = dict(
        data=data,
        input_size=loop.input_size,
        mean=loop.mean,
        std=loop.std,
        device=device,
        channels_last=loop.channels_last,
    )
    history: list[EpochStats] = []
    best = Kept(last=hp.budget == "plateau")
    plateau = Plateau(hp.patience, hp.min_gain / 100)
    step_seconds, images_seen = 0.0, 0
    run_start = time.perf_counter()

    def epoch(number: int) -> EpochStats:
        nonlocal step_seconds, images_seen
        epoch_start = time.perf_counter()
        loss_sum, correct = loop.run(loop.steps_per_epoch)
        seen = loop.steps_per_epoch * loop.batch
        images_seen += seen
        train_loss = loss_sum.item() / seen  # one sync per epoch, not per step
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss became {train_loss} in epoch {number} (lr={hp.lr:g})")
        step_seconds += time.perf_counter() - epoch_start
        with loop.averaged():
            val_loss, val_acc, _ = evaluate(loop.plain, indices=val_t, **evaluation)
            best.offer(number, val_acc, loop.plain)
        return EpochStats(
            number,
            train_loss,
            correct.item() / seen,
            val_loss,
            val_acc,
            loop.lr,
            time.perf_counter() - epoch_start,
            images_seen,
        )

    stop = "capped" if hp.budget == "plateau" else "epochs"
    for number in range(1, loop.epochs + 1):
        stats = epoch(number)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if hp.patience and plateau.stopped(number, stats.val_acc):
            stop = "plateau" if hp.budget == "plateau" else "patience"
            break
    train_seconds = time.perf_counter() - run_start
    run_best = best.snapshot()

    control = control and stop == "plateau"
    trained = {k: v.detach().clone() for k, v in loop.plain.state_dict().items()} if control else None
    loop.plain.load_state_dict(best.state)
    test_loss, test_acc, predictions = evaluate(loop.plain, indices=test_t, **evaluation)
    test_labels = data.labels_of(test_t)
    check = None
    if control:  # train on from where the run stopped, not from its best epoch
        loop.plain.load_state_dict(trained)
        check = _control(loop, best, run_best, len(history), epoch, predictions, test_labels, test_t, evaluation)
    return RunResult(
        history=history,
        best_epoch=run_best[0],
        val_acc=run_best[1],
        test_acc=test_acc,
        test_loss=test_loss,
        test_f1=float(f1_score(test_labels, predictions, average="macro", zero_division=0)),
        predictions=predictions.astype(np.int32),
        train_seconds=train_seconds,
        images_per_second=images_seen / max(step_seconds, 1e-9),
        n_params=count_parameters(loop.plain),
        peak_memory_mb=memory.peak_mb(),
        device=str(device),
        epochs_run=len(history),
        stop=stop,
        steps=len(history) * loop.steps_per_epoch,
        control=check,
        extra={"channels_last": loop.channels_last, "compiled": loop.model is not loop.plain},
        weights=run_best[2],
    )


def _control(
    loop: TrainLoop, best: Kept, run_best, epochs: int, epoch, predictions, labels, test_t, evaluation
) -> dict:
    """The convergence control: train ``epochs`` more epochs (as many steps again), then the
    validation and test accuracy of the epoch the run would have kept over all of them, and the
    test images that changed from the run's ``predictions`` (``analysis.convergence.gain_bound``)."""
    start = time.perf_counter()
    for number in range(epochs + 1, 2 * epochs + 1):
        epoch(number)
    after = predictions
    if best.epoch != run_best[0]:  # it would have kept another epoch: test what it would have reported
        loop.plain.load_state_dict(best.state)
        after = evaluate(loop.plain, indices=test_t, **evaluation)[2]
    gained, lost = flips(predictions, after, labels)
    return {
        "val_acc": best.acc,
        "test_acc": float((after == labels).mean()),
        "gained": gained,
        "lost": lost,
        "steps": 2 * epochs * loop.steps_per_epoch,
        "best_epoch": best.epoch,
        "seconds": time.perf_counter() - start,
    }
