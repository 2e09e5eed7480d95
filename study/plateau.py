"""When a run stops and which of its epochs it keeps: the plateau rule and the kept epoch
(not to be confused with ``study/stopping.py``, clean stops of a command on a signal)."""

from __future__ import annotations

import math

from torch import nn


class Kept:
    """The epoch whose weights a run reports, and a copy of them: the one with the best validation
    accuracy so far (fixed budget), or the last (plateau budget: schedule-free averaged weights
    only get better on average, and the best of a noisy validation curve is often an early spike,
    docs/report.md, "The default budget")."""

    def __init__(self, last: bool = False) -> None:
        self.last = last
        self.epoch, self.acc, self.state = 0, -1.0, None

    def offer(self, epoch: int, acc: float, model: nn.Module) -> None:
        if self.last or acc > self.acc:
            self.epoch, self.acc = epoch, acc
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def snapshot(self) -> tuple[int, float, dict | None]:
        return self.epoch, self.acc, self.state


class Plateau:
    """The stopping rule: stop once validation accuracy has not risen by ``min_gain`` (a fraction)
    above its level for ``patience`` epochs, nor for as many epochs as the run took to reach that
    level: a run whose last gain came at epoch E trains to at least 2E. The second clause is the
    budget control's question asked of the run itself (would as many steps again change it?), and
    it keeps a slow learner from being stopped by one noisy flat stretch: a fixed patience stopped
    MobileNetV2 on 116 digits at 300 steps that went on from 91% to 95% by 700 (docs/report.md)."""

    def __init__(self, patience: int, min_gain: float) -> None:
        self.patience, self.min_gain = patience, min_gain
        self.level, self.since = -math.inf, 0

    def stopped(self, epoch: int, val_acc: float) -> bool:
        """Whether the run stops after ``epoch``, whose validation accuracy was ``val_acc``."""
        # A small tolerance: accuracies are counts over the validation set, min_gain a round number.
        if val_acc >= self.level + self.min_gain - 1e-9:
            self.level, self.since = val_acc, epoch
        return epoch - self.since >= max(self.patience, self.since)
