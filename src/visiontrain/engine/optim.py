"""Optimizers and learning-rate schedules by table lookup (no if/elif chains).

Weight decay applies to weights only: biases and normalization parameters are never decayed (decaying a
BatchNorm scale towards zero fights the normalization). A :class:`Schedule` puts an optional linear
warm-up in front of any schedule and steps per optimizer step, except reduce-on-plateau, which needs a
validation metric and so steps per epoch. All of its state is plain numbers, so resume never needs pickle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from visiontrain.config import OptimConfig
from visiontrain.errors import ConfigError

# (groups, config, fused) -> optimizer. ``fused`` only where torch has a fused kernel for it (SGD, Adam, AdamW).
OPTIMIZERS: dict[str, Callable[[list[dict], OptimConfig, bool], torch.optim.Optimizer]] = {
    "sgd": lambda p, c, f: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0,
                                           weight_decay=c.weight_decay, fused=f or None),
    "adam": lambda p, c, f: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay, fused=f or None),
    "adamw": lambda p, c, f: torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay, fused=f or None),
    "rmsprop": lambda p, c, f: torch.optim.RMSprop(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}
#: Update flags that say how the step runs, not what it computes: kept from the optimizer built for this device
#: when a resume point's state is loaded (a run saved on a GPU, fused, may continue on a CPU).
STEP_FLAGS = ("fused", "foreach", "capturable")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameter names that weight decay must skip: every bias and every normalization-layer parameter."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, _NORMS) or param_name.endswith("bias"):
                names.add(full)
    return names


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    lr_scale: Callable[[str], float] | None = None) -> torch.optim.Optimizer:
    """An optimizer over the model's trainable parameters.

    ``lr_scale(name)`` gives a parameter's learning-rate multiplier (discriminative fine-tuning: a
    smaller rate for a pretrained backbone). Parameters sharing (multiplier, decay) share a group whose
    ``lr`` is ``cfg.lr * scale`` and which remembers its ``lr_scale``.
    """
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    skip_decay = no_decay_names(model)
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            scale = float(lr_scale(name)) if lr_scale else 1.0
            groups.setdefault((scale, name not in skip_decay), []).append(param)
    if not groups:
        raise ConfigError("the model has no trainable parameters: everything is frozen; freeze less")
    param_groups = [{"params": params, "lr": cfg.lr * scale, "lr_scale": scale,
                     "weight_decay": cfg.weight_decay if decay else 0.0}
                    for (scale, decay), params in groups.items()]
    return OPTIMIZERS[cfg.name](param_groups, cfg, fused_step(model))


def fused_step(model: nn.Module) -> bool:
    """Whether the optimizer step should be one fused kernel: every trainable parameter is a float tensor on a CUDA
    device. On a GPU a small network's step is bound by kernel launches; measured on an H200 (docs/benchmarks.md#gpu),
    fused SGD/Adam made a bare loop's step 17% shorter than torch's default (foreach) for both fast_cnn on MNIST and
    airbench_net on CIFAR-shaped data. On the CPU torch's default stays (its results are what the tests pin)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


# Multipliers of the peak learning rate after warm-up: f(step after warm-up, steps after warm-up, cfg, steps/epoch)
_FACTORS: dict[str, Callable[[int, int, OptimConfig, int], float]] = {
    "none": lambda t, n, c, spe: 1.0,
    "cosine": lambda t, n, c, spe: 0.5 * (1 + math.cos(math.pi * min(t, n) / max(n, 1))),
    # Epoch-based decays change the rate exactly at epoch boundaries, counted from the first step.
    "step": lambda t, n, c, spe: c.gamma ** (t // (spe * c.step_size)),
    "multistep": lambda t, n, c, spe: c.gamma ** sum(t >= m * spe for m in c.milestones),
}
SCHEDULES = (*_FACTORS, "onecycle", "plateau")


class Schedule:
    """Warm-up + schedule; call :meth:`step_batch` after every optimizer step, :meth:`step_epoch` after
    every validation."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                 epochs: int, monitor_mode: str = "max") -> None:
        if cfg.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        total = max(1, steps_per_epoch * epochs)
        warm = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
        self.kind, self.warm, self.done = cfg.schedule, warm, 0
        self.plateau: lr_scheduler.ReduceLROnPlateau | None = None
        if cfg.schedule == "onecycle" and total >= 4:  # warm-up + anneal by itself; warmup sets its first phase
            # Each of OneCycle's two phases needs at least two steps (torch divides by the phase length - 1).
            pct = min(max(warm / total if warm else 0.25, 2 / total), 1 - 2 / total)
            self.per_step: lr_scheduler.LRScheduler = lr_scheduler.OneCycleLR(
                optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total, pct_start=pct)
            return
        # (A run of under 4 steps is too short to cycle: it anneals with a cosine instead.)
        factor = _FACTORS.get(cfg.schedule, _FACTORS["cosine" if cfg.schedule == "onecycle" else "none"])

        def multiplier(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return factor(step - warm, total - warm, cfg, steps_per_epoch)

        self.per_step = lr_scheduler.LambdaLR(optimizer, multiplier)
        if cfg.schedule == "plateau":
            self.plateau = lr_scheduler.ReduceLROnPlateau(optimizer, mode=monitor_mode, factor=cfg.gamma,
                                                          patience=cfg.plateau_patience)

    def step_batch(self) -> None:
        self.done += 1
        if self.plateau is None or self.done <= self.warm:
            self.per_step.step()  # plateau runs only the warm-up per step; after it, plateau owns the rate

    def step_epoch(self, metric: float | None) -> None:
        if self.plateau is not None and metric is not None and self.done > self.warm:
            self.plateau.step(metric)

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "per_step": self.per_step.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = int(state["done"])
        if isinstance(self.per_step, lr_scheduler.OneCycleLR):
            # OneCycle's state holds its length: a resume with other --epochs keeps this run's length (the cycle
            # stretches or shrinks around the steps done, as the LambdaLR schedules do, whose state holds none)
            length = {key: getattr(self.per_step, key) for key in ("total_steps", "_schedule_phases")}
            self.per_step.load_state_dict(state["per_step"])
            if self.done > length["total_steps"]:
                raise ConfigError(f"this run has already taken {self.done} optimizer steps, more than its new "
                                  f"length of {length['total_steps']}; resume it with more --epochs")
            self.per_step.__dict__.update(length)
        else:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])
