"""Optimizers and learning-rate schedules by table lookup (no if/elif chains).

Every schedule steps once per optimizer step, so a schedule "per epoch" is expressed in steps; the loop
then needs only one ``scheduler.step()`` call site.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim import lr_scheduler

from visiontrain.config import OptimConfig
from visiontrain.errors import ConfigError

OPTIMIZERS: dict[str, Callable[[list[dict], OptimConfig], torch.optim.Optimizer]] = {
    "sgd": lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda p, c: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda p, c: torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay),
    "rmsprop": lambda p, c: torch.optim.RMSprop(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}

# builder(optimizer, config, steps_per_epoch, epochs) -> scheduler or None
SCHEDULES: dict[str, Callable[..., lr_scheduler.LRScheduler | None]] = {
    "none": lambda opt, c, spe, epochs: None,
    "cosine": lambda opt, c, spe, epochs: lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, spe * epochs)),
    "onecycle": lambda opt, c, spe, epochs: lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=max(1, spe * epochs), pct_start=0.25),
    "step": lambda opt, c, spe, epochs: lr_scheduler.StepLR(opt, step_size=max(1, spe * c.step_size),
                                                             gamma=c.gamma),
}


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    lr_scale: Callable[[str], float] | None = None) -> torch.optim.Optimizer:
    """An optimizer over the model's trainable parameters.

    ``lr_scale(name)`` gives a parameter's learning-rate multiplier (discriminative fine-tuning: a
    smaller rate for a pretrained backbone); parameters with the same multiplier share one group, whose
    ``lr`` is ``cfg.lr * scale`` and which remembers its ``lr_scale`` for schedules.
    """
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(float(lr_scale(name)) if lr_scale else 1.0, []).append(param)
    if not groups:
        raise ConfigError("the model has no trainable parameters: everything is frozen; freeze less")
    param_groups = [{"params": params, "lr": cfg.lr * scale, "lr_scale": scale} for scale, params in groups.items()]
    return OPTIMIZERS[cfg.name](param_groups, cfg)


def build_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                   epochs: int) -> lr_scheduler.LRScheduler | None:
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    return SCHEDULES[cfg.schedule](optimizer, cfg, steps_per_epoch, epochs)
