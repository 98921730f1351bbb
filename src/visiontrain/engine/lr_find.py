"""The learning-rate range test (Smith 2015): raise the rate exponentially over a few hundred steps,
watch the smoothed loss, and suggest the rate where it falls fastest.

It trains a throwaway copy of the run's model; nothing of the real run is touched.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from visiontrain.engine.state import TrainState
from visiontrain.errors import ConfigError

MAX_STEPS = 100_000


def check_sweep(steps: int, start_lr: float, end_lr: float) -> None:
    """The sweep's own settings, before anything is built (``--start-lr 0`` divided by zero)."""
    if not 5 <= steps <= MAX_STEPS:
        raise ConfigError(f"--steps must be 5 to {MAX_STEPS:,} (the suggestion needs 5 points), got {steps}")
    if not all(math.isfinite(v) and v > 0 for v in (start_lr, end_lr)) or start_lr >= end_lr:
        raise ConfigError(f"--start-lr and --end-lr must be positive finite rates with --start-lr below --end-lr, "
                          f"got {start_lr:g} and {end_lr:g}")


def lr_range_test(state: TrainState, loader: Any, start_lr: float = 1e-6, end_lr: float = 1.0,
                  steps: int = 100, diverge: float = 4.0, beta: float = 0.9) -> dict[str, Any]:
    """Returns ``{"lrs", "losses" (smoothed), "suggestion", "min_loss_lr"}``."""
    model, optimizer = state.model, state.optimizer
    prepare = state.prepare
    factor = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    model.train()
    batches = _cycle(loader)
    for i in range(steps):
        lr = start_lr * factor**i
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        images, labels = next(batches)
        images, labels = images.to(state.device), labels.to(state.device)
        optimizer.zero_grad(set_to_none=True)
        with state.precision.autocast():
            loss = state.loss_fn(model(prepare(images)), labels)
        state.precision.backward(loss)
        state.precision.step(optimizer, [p for p in model.parameters() if p.requires_grad], None)
        value = float(loss.detach())
        avg = beta * avg + (1 - beta) * value
        smoothed = avg / (1 - beta ** (i + 1))  # bias-corrected, as in an Adam moment
        if not math.isfinite(smoothed) or (i > 10 and smoothed > diverge * best):
            break
        best = min(best, smoothed)
        lrs.append(lr)
        losses.append(smoothed)
    return {"lrs": lrs, "losses": losses, "suggestion": suggest(lrs, losses),
            "min_loss_lr": lrs[losses.index(min(losses))] if losses else None}


def suggest(lrs: list[float], losses: list[float]) -> float | None:
    """The rate of steepest descent of the smoothed loss against log(lr), skipping the noisy ends."""
    if len(losses) < 5:
        return None
    lo, hi = len(losses) // 10, max(len(losses) // 10 + 2, len(losses) - len(losses) // 10)
    grads = torch.gradient(torch.tensor(losses[lo:hi]), spacing=(torch.log(torch.tensor(lrs[lo:hi])),))[0]
    return lrs[lo + int(grads.argmin())]


def _cycle(loader: Any):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1
