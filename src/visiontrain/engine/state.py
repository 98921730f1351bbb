"""The one object the loop and its callbacks share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visiontrain.config import RunConfig
from visiontrain.data import Preprocessing
from visiontrain.engine.distributed import SINGLE, Dist
from visiontrain.engine.optim import Schedule
from visiontrain.engine.precision import Precision

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainState:
    config: RunConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    precision: Precision
    loss_fn: nn.Module
    device: torch.device
    prep: Preprocessing
    classes: list[str]
    run_dir: Path
    steps_per_epoch: int  # optimizer steps per epoch
    batches_per_epoch: int
    task: str = "classification"  # or "regression" (one output, float targets)
    dist: Dist = SINGLE  # rank and world size under torchrun
    batch_transform: BatchTransform | None = None  # MixUp/CutMix on the normalized batch
    ema: torch.optim.swa_utils.AveragedModel | None = None
    epoch: int = 0  # the epoch being trained (0-based); equals epochs completed between epochs
    step: int = 0  # optimizer steps taken in total
    batch_in_epoch: int = 0  # batches of the current epoch consumed (the resume position)
    # Running sums of the current epoch, on the device (no host sync per step); saved for exact resume.
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    images: torch.Tensor | None = None  # the current uint8 batch, for callbacks that show it
    labels: torch.Tensor | None = None
    loss: torch.Tensor | None = None  # the current batch's loss (on the device; .item() syncs)
    grad_norm: torch.Tensor | None = None  # set when clipping computed it
    step_lr: float = 0.0  # the learning rate the last optimizer step used (before the schedule moved it)
    epoch_metrics: dict[str, Any] = field(default_factory=dict)  # filled at the end of each epoch
    eval_split: str | None = None  # "val", else "test", else None
    eval_loader: Any = None
    best: dict[str, Any] | None = None  # best monitored metrics so far, with their epoch
    stop_reason: str = ""
    elapsed_before: float = 0.0  # training seconds spent before this process (resumed runs)
    resumed_from: dict[str, Any] | None = None
    finite_step: int = 0  # the last step at which the loss and weights were checked finite (engine/loop.py)
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

    def grad_norm_value(self) -> float:
        """The global gradient norm of the last step (grads are kept until the next step starts)."""
        if self.grad_norm is not None:
            return float(self.grad_norm)
        norms = [p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    @property
    def monitor_split(self) -> str:
        """Which split validation metrics come from: 'val', else 'test', else 'train'."""
        return self.eval_split or "train"

    def reset_sums(self) -> None:
        zeros = {"loss_sum": torch.float64, "correct": torch.int64, "seen": torch.int64}
        self.sums = {k: torch.zeros((), dtype=dtype, device=self.device) for k, dtype in zeros.items()}
