"""A run's optimiser and learning-rate schedule, per budget policy (``TrainConfig.budget``):
schedule-free AdamW after a warm-up under the plateau budget (no planned end), fused AdamW, Adam or
SGD on a warm-up + cosine schedule under the fixed one."""

from __future__ import annotations

import math

import torch

from study.config import WARMUP_DIVISOR, TrainConfig


def make_optimizer(model: torch.nn.Module, hp: TrainConfig, fused: bool = True) -> torch.optim.Optimizer:
    """The optimiser of a run: ``hp.optimizer`` at ``hp.lr``, weight decay on weights only.
    ``fused=False`` gives torch's default implementation (``benchmarks/bench_optimizer.py``)."""
    # No weight decay on biases and normalisation parameters (the usual timm practice).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernels update every parameter in one pass (a few launches on CUDA). On the CPU
    # that cut AdamW's step on ResNet-18 from about 30-60 ms to 6 ms: the loop over parameter
    # tensors is memory-bound, and it was a third of a training step at 32 px.
    kernel = {"fused": True} if fused else {}
    if hp.budget == "plateau":
        return _schedule_free(groups, hp)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=hp.lr, **kernel)
    if hp.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient, as the reference notebook used it.
        return torch.optim.Adam(groups, lr=hp.lr, **kernel)
    return torch.optim.SGD(groups, lr=hp.lr, momentum=0.9, nesterov=True)


def _schedule_free(groups: list[dict], hp: TrainConfig) -> torch.optim.Optimizer:
    """The plateau budget's optimiser: schedule-free AdamW (``adam`` only without weight decay,
    where the two agree) or SGD with momentum 0.9, warmed up over ``warmup_steps``."""
    import schedulefree

    if hp.optimizer == "sgd":
        optimizer = schedulefree.SGDScheduleFree(groups, lr=hp.lr, momentum=0.9, warmup_steps=hp.warmup_steps)
    else:
        optimizer = schedulefree.AdamWScheduleFree(groups, lr=hp.lr, warmup_steps=hp.warmup_steps)
    optimizer.train()  # it starts in evaluation mode
    return optimizer


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` keeps averaged weights to evaluate (``.eval()`` / ``.train()``)."""
    return "train_mode" in optimizer.defaults


def schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over the first 10% of steps (``WARMUP_DIVISOR``), then cosine decay to zero;
    constant for a schedule-free optimiser (it warms up by itself and has no planned end)."""
    if is_schedule_free(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = max(1, total_steps // WARMUP_DIVISOR)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
