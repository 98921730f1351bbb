"""Turn a config into the pieces of a training state: device, precision, loss, mixing, EMA."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import nn

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


def build_mixing(cfg: TrainConfig, num_classes: int, task: str = "classification") -> BatchTransform | None:
    """MixUp and/or CutMix (one of them per batch when both are on) from torchvision.transforms.v2; for
    multi-label targets (multi-hot rows, which torchvision's take as class indices) :func:`mix_multilabel`."""
    if task == "multilabel" and (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0):
        return lambda images, labels: mix_multilabel(images, labels, cfg.mixup_alpha, cfg.cutmix_alpha)
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return None
    from torchvision.transforms import v2  # torchvision costs ~0.3-2 CPU-s to import: only when mixing

    ops: list[nn.Module] = []
    if cfg.mixup_alpha > 0:
        ops.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.cutmix_alpha > 0:
        ops.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
    return lambda images, labels: op(images, labels)


def mix_multilabel(images: torch.Tensor, labels: torch.Tensor, mixup: float, cutmix: float) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """MixUp or CutMix (one of the two per batch when both are on, as torchvision's RandomChoice) of a batch with
    its rolled self; multi-hot targets mix with the same weight as the pixels (BCE then takes soft targets).
    Draws from torch's global generator, like torchvision's, so a resumed run draws the same.

    >>> x, y = torch.zeros(2, 1, 4, 4), torch.tensor([[1., 0.], [0., 1.]])
    >>> _, mixed = mix_multilabel(x, y, 0.2, 0.0)
    >>> bool(torch.allclose(mixed.sum(1), torch.ones(2)))
    True
    """
    use_cutmix = cutmix > 0 and (mixup <= 0 or bool(torch.rand(()) < 0.5))
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    other_images, other_labels = images.roll(1, 0), labels.roll(1, 0)
    if not use_cutmix:
        return images * lam + other_images * (1 - lam), labels * lam + other_labels * (1 - lam)
    h, w = images.shape[-2:]
    cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = other_images[..., top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (h * w)  # the share of pixels kept, as torchvision's CutMix
    return mixed, labels * lam + other_labels * (1 - lam)


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
