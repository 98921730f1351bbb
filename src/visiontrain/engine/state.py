"""The one object the loop and its callbacks share, and what it computes once, before the loop: the monitored
metric (:class:`Monitor`), the plain model under its compile/DDP wrappers and the input preparer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from visiontrain.checkpoint.format import raw_model
from visiontrain.config import RunConfig
from visiontrain.data import Normalizer, Preprocessing
from visiontrain.engine.distributed import SINGLE, Dist
from visiontrain.engine.optim import Schedule
from visiontrain.engine.precision import Precision

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
InputPreparer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Monitor:
    """The metric that picks the best checkpoint (and drives early stopping and reduce-on-plateau).

    Without a validation split (``--val-split 0``) nothing is fit to pick an epoch — picking on the test split
    would report a score chosen on that same split — so ``auto`` keeps the last epoch (``last``) and lets the
    training metric drive reduce-on-plateau.

    >>> Monitor.resolve("auto", "val", "classification")
    Monitor(key='val/accuracy', mode='max', last=False)
    >>> Monitor.resolve("auto", "val", "multilabel")
    Monitor(key='val/map', mode='max', last=False)
    >>> Monitor.resolve("auto", "test", "regression")
    Monitor(key='train/loss', mode='min', last=True)
    >>> Monitor.of("val/loss").better(0.4, 0.5)
    True
    """

    key: str
    mode: Literal["min", "max"]
    last: bool = False  # no validation split: the last epoch is the result, whatever the metric says

    @classmethod
    def of(cls, key: str) -> Monitor:
        """Lower is better for losses and errors, higher for everything else."""
        return cls(key, "min" if key.endswith(("loss", "error", "mae", "rmse", "hamming_loss")) else "max")

    @classmethod
    def resolve(cls, setting: str, split: str | None, task: str) -> Monitor:
        """``train.monitor`` for a run validating on ``split`` ("val"; "test" or None: no validation split)."""
        if setting != "auto":
            return cls.of(setting)
        metric = {"regression": "loss", "multilabel": "map"}.get(task, "accuracy")
        if split != "val":
            return cls(f"train/{metric}", cls.of(f"train/{metric}").mode, last=True)
        return cls.of(f"{split}/{metric}")

    def better(self, value: float, best: float | None) -> bool:
        return self.last or best is None or (value < best if self.mode == "min" else value > best)


def input_preparer(normalizer: Normalizer, channels_last: bool) -> InputPreparer:
    """uint8 batch on the device → normalized float input in the model's memory format."""
    def prepare(images: torch.Tensor) -> torch.Tensor:
        x = normalizer(images)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

    return prepare


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
    task: str = "classification"  # or "regression" (one output, float targets), "multilabel" (multi-hot targets)
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
    error: BaseException | None = None  # set when fit fails: on_fit_end then closes files but writes nothing
    thresholds: list[float] | None = None  # multi-label: tuned on the last epoch's val split (saved for resume)
    threads: str = ""  # torch's CPU threads for this run, and why (train.threads; trainer/wiring.py)
    monitor: Monitor = field(kw_only=True)  # resolved once, by whoever builds the state
    # Computed once from the fields above (see __post_init__), not by each callback:
    raw_model: nn.Module = field(init=False, repr=False)  # the plain module under torch.compile/DDP
    prepare: InputPreparer = field(init=False, repr=False)  # uint8 batch → the model's input
    _loss_cache: tuple[int, float] | None = None

    def __post_init__(self) -> None:
        self.raw_model = raw_model(self.model)
        self.prepare = input_preparer(self.prep.normalizer(), self.config.train.channels_last)

    def every(self, n: int | None) -> bool:
        """Whether the optimizer step just taken is one of every ``n`` (never when ``n`` is 0 or None): the one
        rule for logging every ``log_every`` steps and checkpointing every ``checkpoint_every``."""
        return bool(n) and self.step % n == 0

    def log_due(self) -> bool:
        """Whether to log the step just taken: every ``log_every`` steps, and at the last batch of an epoch none of
        whose steps was one of those — so a short run (fewer steps than ``log_every``) logs its training loss,
        learning rate and gradient norm once per epoch all the same. Decided from the step alone: a resumed run
        logs the same steps as an unbroken one."""
        n = self.config.train.log_every
        if self.every(n):
            return True
        first = self.step - -(-self.batch_in_epoch // self.config.train.accumulate)  # the step before the epoch's first
        return self.batch_in_epoch == self.batches_per_epoch and bool(n) and self.step // n == first // n

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
