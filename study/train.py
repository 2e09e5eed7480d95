"""One training run: subset indices + model name + hyper-parameters + seed + device ->
history, test metrics, predictions and timings.

The images live in one uint8 tensor on the training device; a batch is an index slice of it,
augmented, resized and normalised on the device. There is no DataLoader and no per-image
Python work in the loop.

Budget policy: a run trains for ``epochs`` rounds. A round is one pass over the run's subset,
or as many passes as give at least ``min_steps / epochs`` optimiser steps when the subset is
small, so tiny fractions are not starved of updates. Validation follows each round; the weights
of the best round are the ones tested.
"""

from __future__ import annotations

import copy
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from study.augment import BatchAugment, to_model_input
from study.config import TrainConfig
from study.errors import DivergedError
from study.models import count_parameters, create_model, input_size_for, normalization, to_device

EVAL_BATCH = 256


@dataclass
class TrainData:
    """The images a run needs, on the training device, with their labels."""

    images: torch.Tensor  # uint8 (N, H, W, 3)
    labels: torch.Tensor  # int64 (N,)
    num_classes: int
    hflip: bool = True

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: np.ndarray, num_classes: int, device: torch.device, hflip: bool = True) -> "TrainData":
        """Copy (memory-mapped) arrays to ``device`` once; batches are then slices on the device."""
        imgs = torch.from_numpy(np.ascontiguousarray(images))
        return cls(imgs.to(device), torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device), num_classes, hflip)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])


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
    extra: dict = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without it is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from study.errors import UserError

        raise UserError("device='cuda' was asked for but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def budget(n_train: int, hp: TrainConfig) -> tuple[int, int, int]:
    """(batch size, steps per round, rounds) for a subset of ``n_train`` images."""
    batch = min(hp.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / batch)
    steps_per_round = max(steps_per_epoch, math.ceil(hp.min_steps / hp.epochs))
    return batch, steps_per_round, hp.epochs


def _batches(n: int, batch: int, generator: torch.Generator):
    """An endless stream of index batches over successive seeded permutations of ``range(n)``.

    Batches have equal size: a stream rather than per-epoch splitting, so no batch of one
    (which BatchNorm refuses) appears at an epoch's end.
    """
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while len(buffer) < batch:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:batch]
        buffer = buffer[batch:]


def _optimizer(model: torch.nn.Module, hp: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation parameters (the usual timm practice).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=hp.lr)
    if hp.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient, as the reference notebook used it.
        return torch.optim.Adam(groups, lr=hp.lr)
    return torch.optim.SGD(groups, lr=hp.lr, momentum=0.9, nesterov=True)


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warmup = max(1, total_steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(model, data: TrainData, indices: torch.Tensor, input_size: int, mean, std, device: torch.device) -> tuple[float, float, np.ndarray]:
    """(loss, accuracy, predictions) of ``model`` on ``data`` at ``indices``, without augmentation."""
    model.eval()
    total_loss, preds = 0.0, []
    for start in range(0, len(indices), EVAL_BATCH):
        idx = indices[start : start + EVAL_BATCH]
        x = to_model_input(data.images[idx], input_size, mean, std, channels_last=device.type == "cuda")
        with _autocast(device):
            logits = model(x)
        y = data.labels[idx]
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        preds.append(logits.argmax(1))
    pred = torch.cat(preds).cpu().numpy() if preds else np.zeros(0, np.int64)
    labels = data.labels[indices].cpu().numpy()
    n = max(1, len(indices))
    return total_loss / n, float((pred == labels).mean()) if len(pred) else float("nan"), pred


def _autocast(device: torch.device):
    # bf16 autocast on CUDA: no loss scaling needed, and tensor cores do the matrix work.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def train_run(
    data: TrainData,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    model_name: str,
    hp: TrainConfig,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
    model_factory: Callable[[str, int], torch.nn.Module] | None = None,
) -> RunResult:
    """Train ``model_name`` on ``data[train_idx]``, select the best round on ``val_idx`` and
    evaluate it on ``test_idx``.

    ``seed`` fixes the initialisation, the batch order and the augmentation stream. ``on_epoch``
    is called after each round's validation (progress, heartbeats, Optuna pruning: it may raise
    to stop the run). Raises DivergedError when the training loss becomes non-finite.
    """
    torch.manual_seed(seed)
    model = model_factory(model_name, data.num_classes) if model_factory else create_model(model_name, data.num_classes, hp)
    model = to_device(model, device)
    mean_t, std_t = (torch.tensor(v, device=device) for v in normalization(model, hp.normalization))
    input_size = input_size_for(model_name, hp.input_size, data.image_size)
    augment = BatchAugment(hp.augment, hp.augment_strength, hflip=data.hflip)
    aug_gen = torch.Generator(device=device).manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)

    train_t = torch.as_tensor(np.asarray(train_idx), dtype=torch.long)
    val_t = torch.as_tensor(np.asarray(val_idx), dtype=torch.long, device=device)
    test_t = torch.as_tensor(np.asarray(test_idx), dtype=torch.long, device=device)
    batch, steps_per_round, rounds = budget(len(train_t), hp)
    optimizer = _optimizer(model, hp)
    scheduler = _schedule(optimizer, steps_per_round * rounds)
    stream = _batches(len(train_t), batch, order_gen)
    channels_last = device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_t = train_t.to(device)

    history: list[EpochStats] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    step_seconds, images_seen = 0.0, 0
    run_start = time.perf_counter()
    for epoch in range(1, rounds + 1):
        model.train()
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for _ in range(steps_per_round):
            idx = train_t[next(stream).to(device)]
            x = to_model_input(data.images[idx], input_size, mean_t, std_t, augment, aug_gen, channels_last)
            y = data.labels[idx]
            with _autocast(device):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=hp.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
        seen = steps_per_round * batch
        images_seen += seen
        train_loss = loss_sum.item() / seen  # one sync per round, not per step
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss became {train_loss} in round {epoch} (lr={hp.lr:g})")
        step_seconds += time.perf_counter() - epoch_start
        val_loss, val_acc, _ = evaluate(model, data, val_t, input_size, mean_t, std_t, device)
        stats = EpochStats(epoch, train_loss, correct.item() / seen, val_loss, val_acc, scheduler.get_last_lr()[0], time.perf_counter() - epoch_start, images_seen)
        history.append(stats)
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(stats)
        if hp.patience and epoch - best_epoch >= hp.patience:
            break
    train_seconds = time.perf_counter() - run_start

    model.load_state_dict(best_state)
    test_loss, test_acc, predictions = evaluate(model, data, test_t, input_size, mean_t, std_t, device)
    test_labels = data.labels[test_t].cpu().numpy()
    return RunResult(
        history=history,
        best_epoch=best_epoch,
        val_acc=best_acc,
        test_acc=test_acc,
        test_loss=test_loss,
        test_f1=float(f1_score(test_labels, predictions, average="macro", zero_division=0)),
        predictions=predictions.astype(np.int32),
        train_seconds=train_seconds,
        images_per_second=images_seen / max(step_seconds, 1e-9),
        n_params=count_parameters(model),
        peak_memory_mb=_peak_memory_mb(device),
        device=str(device),
        epochs_run=len(history),
    )


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the run: the CUDA allocator's on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
