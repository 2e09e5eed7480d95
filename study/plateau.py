"""When a run stops and which of its epochs it keeps: the plateau rule and the best epoch so far
(not to be confused with ``study/stopping.py``, clean stops of a command on a signal)."""

from __future__ import annotations

import math

from torch import nn


class Best:
    """The epoch with the best validation accuracy so far, and a copy of its weights."""

    def __init__(self) -> None:
        self.epoch, self.acc, self.state = 0, -1.0, None

    def offer(self, epoch: int, acc: float, model: nn.Module) -> None:
        if acc > self.acc:
            self.epoch, self.acc = epoch, acc
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def snapshot(self) -> tuple[int, float, dict | None]:
        return self.epoch, self.acc, self.state


class Plateau:
    """The stopping rule: stop once ``patience`` epochs have passed since validation accuracy
    last rose by at least ``min_gain`` (a fraction) above the level it had then. A slow climb
    keeps a run going as long as it adds ``min_gain`` within any ``patience`` epochs."""

    def __init__(self, patience: int, min_gain: float) -> None:
        self.patience, self.min_gain = patience, min_gain
        self.level, self.since = -math.inf, 0

    def stopped(self, epoch: int, val_acc: float) -> bool:
        """Whether the run stops after ``epoch``, whose validation accuracy was ``val_acc``."""
        # A small tolerance: accuracies are counts over the validation set, min_gain a round number.
        if val_acc >= self.level + self.min_gain - 1e-9:
            self.level, self.since = val_acc, epoch
        return epoch - self.since >= self.patience
