"""Mixed precision as one object: autocast for the forward pass, a GradScaler for fp16 backward.

The training step is written once; ``32`` simply disables both (``autocast(enabled=False)``,
``GradScaler(enabled=False)``), so there are no near-copies of the step per precision.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from visiontrain.errors import ConfigError

DTYPES = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in DTYPES:
            raise ConfigError(f"unknown precision {mode!r}; choose one of: {', '.join(DTYPES)}")
        if mode == "fp16" and device.type == "mps":
            raise ConfigError("fp16 with a GradScaler is not supported on MPS; use --precision bf16 or 32")
        self.mode, self.device, self.dtype = mode, device, DTYPES[mode]
        self.scaler = torch.amp.GradScaler(device.type, enabled=mode == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
             clip_norm: float | None) -> torch.Tensor | None:
        """Unscale, clip, step, update; returns the pre-clip gradient norm when clipping."""
        norm = None
        if clip_norm is not None:
            self.scaler.unscale_(optimizer)
            norm = nn.utils.clip_grad_norm_(params, clip_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        return norm
