"""Loss functions by name; class weights from label counts with ``class_weights: auto``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from visiontrain.config import TrainConfig
from visiontrain.errors import ConfigError

# builder(config, class weights or None) -> loss module; the task each loss is for
LOSSES: dict[str, tuple[str, Callable[[TrainConfig, torch.Tensor | None], nn.Module]]] = {
    "cross_entropy": ("classification",
                      lambda c, w: nn.CrossEntropyLoss(weight=w, label_smoothing=c.label_smoothing)),
    "bce": ("multilabel", lambda c, w: nn.BCEWithLogitsLoss(pos_weight=w)),
    "mse": ("regression", lambda c, w: nn.MSELoss()),
    "l1": ("regression", lambda c, w: nn.L1Loss()),
    "smooth_l1": ("regression", lambda c, w: nn.SmoothL1Loss()),
}


def class_weights(cfg: TrainConfig, train_labels: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
    """``auto``: inverse class frequency, normalized so a balanced set gets weight 1 for every class."""
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "auto":
        if train_labels is None:
            raise ConfigError("class_weights: auto needs the training labels of a classification dataset")
        counts = torch.bincount(train_labels, minlength=num_classes).double().clamp_min(1)
        return (counts.sum() / (num_classes * counts)).float()
    if isinstance(cfg.class_weights, list):
        if len(cfg.class_weights) != num_classes:
            raise ConfigError(f"class_weights has {len(cfg.class_weights)} values but the data has "
                              f"{num_classes} classes")
        return torch.tensor(cfg.class_weights, dtype=torch.float32)
    raise ConfigError(f"class_weights must be 'auto' or a list of numbers, not {cfg.class_weights!r}")


class _OneOutput(nn.Module):
    """Regression losses on a one-output model: [B, 1] outputs against [B] targets. Without the squeeze,
    broadcasting would silently compare every output with every target ([B, B])."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.inner(outputs.reshape(targets.shape).float(), targets.float())


AUTO = {"classification": "cross_entropy", "regression": "mse", "multilabel": "bce"}


def build_loss(cfg: TrainConfig, task: str, weights: torch.Tensor | None) -> nn.Module:
    """The configured loss; ``auto`` picks cross-entropy for classes and MSE for regression values."""
    if cfg.loss == "auto":
        cfg = dataclasses.replace(cfg, loss=AUTO[task])
    if cfg.loss not in LOSSES:
        raise ConfigError(f"unknown loss {cfg.loss!r}; choose one of: {', '.join(LOSSES)}")
    loss_task, builder = LOSSES[cfg.loss]
    if loss_task != task:
        raise ConfigError(f"loss {cfg.loss!r} is for {loss_task} but the data is a {task} dataset; "
                          f"use one of: {', '.join(k for k, (t, _) in LOSSES.items() if t == task)}")
    loss = builder(cfg, weights)
    return _OneOutput(loss) if task == "regression" else loss
