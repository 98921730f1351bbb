"""Gradual unfreezing: train the head first, then the frozen layers too, from a given epoch on.

The newly trainable parameters join the optimizer as new parameter groups — the learning rates of the
existing groups, and of every running schedule, stay exactly where they are. Each new group copies the
schedule's per-group bookkeeping from the first group, scaled by its own ``lr_scale``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn
from torch.optim import lr_scheduler

from visiontrain.engine.callbacks import Callback
from visiontrain.engine.optim import no_decay_names
from visiontrain.engine.state import TrainState
from visiontrain.models.surgery import unfreeze

_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")  # per-group numbers that scale with the learning rate


class GradualUnfreeze(Callback):
    """At the start of epoch ``at_epoch`` (1-based, as printed) unfreeze ``names`` and optimize them."""

    order = "control"

    def __init__(self, model: nn.Module, names: list[str], at_epoch: int,
                 lr_scale: Callable[[str], float] | None = None) -> None:
        self.model, self.names, self.at_epoch, self.lr_scale = model, names, at_epoch, lr_scale
        self.done = False

    def state_dict(self) -> dict[str, bool]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, bool]) -> None:
        self.done = bool(state.get("done", False))

    def on_resume(self, state: TrainState) -> None:
        # The saved optimizer state has the groups added at unfreezing: rebuild them before it is loaded.
        if self.done:
            self.done = False
            self._unfreeze(state)

    def on_epoch_start(self, state: TrainState) -> None:
        if self.done or state.epoch + 1 < self.at_epoch:
            return
        self._unfreeze(state)

    def _unfreeze(self, state: TrainState) -> None:
        params = unfreeze(self.model, self.names)
        groups = add_param_groups(state.optimizer, getattr(state, "schedule", None), self.model,
                                  {id(p) for p in params}, self.lr_scale,
                                  state.config.optim.weight_decay)
        self.done = True
        count = sum(p.numel() for p in params)
        print(f"epoch {state.epoch + 1}: unfroze {len(params)} tensors ({count:,} parameters) into {groups} new "
              "optimizer group(s)", file=sys.stderr, flush=True)


def add_param_groups(optimizer: torch.optim.Optimizer, schedule: object, model: nn.Module, ids: set[int],
                     lr_scale: Callable[[str], float] | None, weight_decay: float) -> int:
    """Add the parameters with ``id`` in ``ids`` as groups keyed by (lr scale, decay); returns how many."""
    skip = no_decay_names(model)
    grouped: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if id(param) in ids:
            scale = float(lr_scale(name)) if lr_scale else 1.0
            grouped.setdefault((scale, name not in skip), []).append(param)
    ref = optimizer.param_groups[0]
    for (scale, decay), params in grouped.items():
        ratio = scale / float(ref.get("lr_scale", 1.0))
        group = {k: v for k, v in ref.items() if k != "params"}
        for key in _LR_KEYS:
            if key in group:
                group[key] = group[key] * ratio
        group.update(params=params, lr_scale=scale, weight_decay=weight_decay if decay else 0.0)
        optimizer.add_param_group(group)
        for sched in _schedulers(schedule):
            _extend(sched, ratio)
    return len(grouped)


def _schedulers(schedule: object) -> list:
    kinds = (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)
    if schedule is None:
        return []
    if isinstance(schedule, kinds):
        return [schedule]
    return [v for v in vars(schedule).values() if isinstance(v, kinds)]


def _extend(sched: object, ratio: float) -> None:
    # Torch schedulers keep per-group lists sized at construction; a new group needs its entry in each.
    for attr, scaled in (("base_lrs", True), ("_last_lr", True), ("lr_lambdas", False), ("min_lrs", False)):
        values = getattr(sched, attr, None)
        if isinstance(values, list) and values:
            values.append(values[0] * ratio if scaled else values[0])
