"""The network of ``--recipe cifar_gpu``: airbench's CIFAR-10 speedrun net (Keller Jordan, "94% on CIFAR-10 in
3.29 seconds on a single GPU", 2024), without its data-dependent whitening initialisation.

A 2x2 stem conv (24 channels, unpadded), then three groups of conv → 2x2 max-pool → BN → GELU → conv → BN → GELU
(64, 256, 256 channels), a global max-pool and a bias-free linear head whose output is scaled by 1/9 (airbench's
temperature). At 32 px the maps are 31 → 15 → 7 → 3 → 1. airbench freezes its stem to the whitening of the
training patches; here the stem is learned like every other layer (one network for every input).

>>> from visiontrain.models.entry import ModelInput
>>> net = airbench_net(ModelInput(3, 32, 10))
>>> net(torch.zeros(2, 3, 32, 32)).shape, sum(p.numel() for p in net.parameters())
(torch.Size([2, 10]), 1972792)
"""

from __future__ import annotations

import torch
from torch import nn

from visiontrain.models.entry import ModelInput, register_model


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _group(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


@register_model("airbench_net", "airbench's CIFAR-10 speedrun net (--recipe cifar_gpu): 2x2 stem, 3 conv groups "
                "64/256/256, max-pool head scaled 1/9 (args: widths, scale)", min_size=16)
def airbench_net(inp: ModelInput, widths: list[int] | None = None, stem: int = 24, scale: float = 1 / 9) -> nn.Module:
    """``widths`` the three groups' channels, ``stem`` the stem conv's, ``scale`` the logits' factor."""
    widths = list(widths) if widths is not None else [64, 256, 256]
    layers: list[nn.Module] = [nn.Conv2d(inp.channels, stem, 2, padding=0), nn.GELU()]
    cin = stem
    for width in widths:
        layers += _group(cin, width)
        cin = width
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(cin, inp.num_classes, bias=False),
                         _Scale(scale))
