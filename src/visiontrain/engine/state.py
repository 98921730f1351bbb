"""The one object the loop and its callbacks share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visiontrain.config import RunConfig
from visiontrain.data import Preprocessing


@dataclass
class TrainState:
    config: RunConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    loss_fn: nn.Module
    device: torch.device
    prep: Preprocessing
    classes: list[str]
    run_dir: Path
    steps_per_epoch: int
    epoch: int = 0  # the epoch being trained (0-based); equals epochs completed between epochs
    step: int = 0  # optimizer steps taken in total
    batch_in_epoch: int = 0
    images: torch.Tensor | None = None  # the current uint8 batch, for callbacks that show it
    loss: torch.Tensor | None = None  # the current batch's loss (on the device; .item() syncs)
    epoch_metrics: dict[str, float] = field(default_factory=dict)  # filled at the end of each epoch
    best: dict[str, Any] | None = None  # best validation metrics so far, with their epoch
    history: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str = ""
    _loss_cache: tuple[int, float] | None = None

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def loss_value(self) -> float:
        """The current loss as a float, synchronised once per step however many callbacks ask."""
        if self.loss is None:
            return float("nan")
        if self._loss_cache is None or self._loss_cache[0] != self.step:
            self._loss_cache = (self.step, float(self.loss.item()))
        return self._loss_cache[1]

    @property
    def monitor_split(self) -> str:
        """Which split validation metrics come from: 'val', else 'test', else 'train'."""
        return str(self.epoch_metrics.get("_split", "val"))
