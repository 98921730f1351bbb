"""Mixed precision as one object: autocast for the forward pass, a GradScaler for fp16 backward.

The training step is written once; ``32`` simply disables both (``autocast(enabled=False)``,
``GradScaler(enabled=False)``), so there are no near-copies of the step per precision.

``auto`` picks bf16 where the hardware computes in it natively — a CUDA GPU that supports bf16, or a CPU with
AMX or AVX-512 BF16 (there oneDNN runs bf16 convolutions and matmuls about 1.5x faster than fp32 on this
project's 2-core Xeon; see docs/benchmarks.md) — and full precision everywhere else (a CPU without them only
emulates bf16, which is slower, and MPS). The choice is printed at the start and saved in ``summary.json``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from torch import nn

from visiontrain.errors import ConfigError

DTYPES = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = (*DTYPES, "auto")
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bf16 arithmetic


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bf16 natively (Intel AMX or AVX-512 BF16; Linux only, else False)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in _NATIVE_BF16_FLAGS)


def resolve_precision(mode: str, device: torch.device) -> str:
    """``mode`` with ``auto`` replaced by what fits ``device`` (see the module doc)."""
    if mode != "auto":
        return mode
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "32"


class Precision:
    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in CHOICES:
            raise ConfigError(f"unknown precision {mode!r}; choose one of: {', '.join(CHOICES)}")
        mode = resolve_precision(mode, device)
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
