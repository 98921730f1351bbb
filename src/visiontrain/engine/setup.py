"""Turn a config into the pieces of a training state: device, precision, loss, mixing, EMA."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from visiontrain.config import TrainConfig
from visiontrain.engine.state import BatchTransform
from visiontrain.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda, then mps, then cpu; explicit names are checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} asked for but MPS is not available here; use --device cpu or auto")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; cuDNN must not pick kernels by timing.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def build_mixing(cfg: TrainConfig, num_classes: int) -> BatchTransform | None:
    """MixUp and/or CutMix (one of them per batch when both are on) from torchvision.transforms.v2."""
    ops: list[nn.Module] = []
    if cfg.mixup_alpha > 0:
        ops.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.cutmix_alpha > 0:
        ops.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    if not ops:
        return None
    op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
    return lambda images, labels: op(images, labels)


def build_ema(model: nn.Module, decay: float | None) -> torch.optim.swa_utils.AveragedModel | None:
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def prepare_model(model: nn.Module, device: torch.device, cfg: TrainConfig) -> nn.Module:
    memory = torch.channels_last if cfg.channels_last and device.type != "mps" else torch.contiguous_format
    model = model.to(device, memory_format=memory)
    if cfg.compile:
        model = torch.compile(model)
    return model
