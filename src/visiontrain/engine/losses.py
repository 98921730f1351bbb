"""Loss functions by name; class weights from label counts with ``class_weights: auto`` (multi-label: positive
weights per label with ``pos_weight: auto``)."""

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
    "asl": ("multilabel", lambda c, w: AsymmetricLoss()),
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


def label_weights(cfg: TrainConfig, task: str, train_labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """The loss weights the task takes: ``pos_weight`` for multi-label, ``class_weights`` for classes; the other
    one set is an error, not silently ignored."""
    if task == "multilabel":
        if cfg.class_weights is not None:
            raise ConfigError("class_weights is for one class per image; a multi-label run weighs each label's "
                              "positives with --pos-weight auto (or one weight per label)")
        return pos_weights(cfg, train_labels, num_classes)
    if cfg.pos_weight is not None:
        raise ConfigError(f"pos_weight is for multi-label data, and this is a {task} dataset; use --class-weights")
    return class_weights(cfg, train_labels if task == "classification" else None, num_classes)


def pos_weights(cfg: TrainConfig, train_labels: torch.Tensor, num_labels: int) -> torch.Tensor | None:
    """``pos_weight: auto``: negatives/positives of each label in train (clamped to 1..100), so BCE counts a
    rare label's few positives as much as its many negatives; or the list given, one weight per label."""
    if cfg.pos_weight is None:
        return None
    if cfg.pos_weight == "auto":
        positives = train_labels.double().sum(dim=0)
        return ((len(train_labels) - positives) / positives.clamp_min(1)).clamp(1, 100).float()
    if isinstance(cfg.pos_weight, list):
        if len(cfg.pos_weight) != num_labels:
            raise ConfigError(f"pos_weight has {len(cfg.pos_weight)} values but the data has {num_labels} labels")
        return torch.tensor(cfg.pos_weight, dtype=torch.float32)
    raise ConfigError(f"pos_weight must be 'auto' or a list of numbers, not {cfg.pos_weight!r}")


class AsymmetricLoss(nn.Module):
    """Asymmetric loss for multi-label (Ridnik et al., ICCV 2021): focusing on positives (``gamma_pos``) and,
    harder, on negatives (``gamma_neg``), and easy negatives under ``clip`` dropped — many tags are absent from
    most images, and plain BCE spends its gradient on them. Mean over labels and images, like BCE's."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits.float())
        y = targets.float()
        p_neg = (p - self.clip).clamp_min(0)  # probability shifting: a negative under `clip` costs nothing
        pos = y * torch.log(p.clamp_min(1e-8)) * (1 - p) ** self.gamma_pos
        neg = (1 - y) * torch.log((1 - p_neg).clamp_min(1e-8)) * p_neg**self.gamma_neg
        return -(pos + neg).mean()


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
    """The configured loss; ``auto`` picks cross-entropy for classes, BCE for multi-label and MSE for values."""
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
