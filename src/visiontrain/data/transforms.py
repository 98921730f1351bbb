"""Transforms as data: lists of ``{"name": "Resize", "size": 32}`` built with torchvision.transforms.v2.

Specs (not Python objects) are what a checkpoint stores, so ``predict`` and ``serve`` rebuild exactly the
evaluation pipeline a model was trained with. Only the names below can be built: a spec from a file never
names arbitrary code. Transforms work on uint8 image tensors [C,H,W] or batches [B,C,H,W]; conversion to
float and normalization happen once per batch on the training device (see ``loaders.Normalizer``).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

from visiontrain.errors import ConfigError

ALLOWED: dict[str, Any] = {
    "Resize": v2.Resize,
    "CenterCrop": v2.CenterCrop,
    "RandomCrop": v2.RandomCrop,
    "RandomResizedCrop": v2.RandomResizedCrop,
    "RandomHorizontalFlip": v2.RandomHorizontalFlip,
    "RandomVerticalFlip": v2.RandomVerticalFlip,
    "RandomRotation": v2.RandomRotation,
    "ColorJitter": v2.ColorJitter,
    "Pad": v2.Pad,
}


def build_transforms(specs: list[dict[str, Any]]) -> v2.Compose:
    """Build ``v2.Compose`` from specs; unknown names or bad arguments are a ConfigError."""
    steps = []
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ConfigError(f"transform spec {spec!r} must be a mapping with a 'name'")
        name = spec["name"]
        if name not in ALLOWED:
            raise ConfigError(f"unknown transform {name!r}; choose one of: {', '.join(sorted(ALLOWED))}")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        if name in ("Resize", "RandomResizedCrop"):
            kwargs.setdefault("antialias", True)
        try:
            steps.append(ALLOWED[name](**kwargs))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"transform {name} with {kwargs}: {exc}") from None
    return v2.Compose(steps)


def eval_specs(size: int, from_files: bool) -> list[dict[str, Any]]:
    """The deterministic evaluation pipeline: a square ``size`` input, never distorted for photos."""
    if from_files:
        # Shorter side to `size`, then the centre: keeps the aspect ratio of photos.
        return [{"name": "Resize", "size": size}, {"name": "CenterCrop", "size": [size, size]}]
    return [{"name": "Resize", "size": [size, size]}]


def train_specs(size: int, from_files: bool) -> list[dict[str, Any]]:
    """Light default augmentation for file datasets; in-memory sets train on the images as they are."""
    if from_files:
        return [{"name": "RandomResizedCrop", "size": [size, size], "scale": [0.5, 1.0]},
                {"name": "RandomHorizontalFlip"}]
    return eval_specs(size, from_files=False)


def adapt_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray → RGB by repeating, RGB → gray by ITU-R 601 luma (Pillow's weights), on uint8 [..., C, H, W]."""
    have = x.shape[-3]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        gray = (x.float() * weights).sum(dim=-3, keepdim=True)
        return gray.round().clamp(0, 255).to(torch.uint8)
    raise ConfigError(f"cannot turn {have}-channel images into {channels}-channel input")
