"""VGG-style nets sized for small images: the notes' VGG16 (seed 003/004; docs/cookbook.md §10, changing a
torchvision model) with BatchNorm and a global-pool head.

A layer list reads like torchvision's VGG configs: numbers are 3x3 Conv-BN-ReLU widths (in units of
``width``/64), ``"M"`` a 2x2 max-pool. Pools that would shrink the map below 1 px are skipped, so the
same net runs on 8 px and on 64 px inputs. The head is ``classifier``: Dropout → Linear.
"""

from __future__ import annotations

import torch
from torch import nn

from visiontrain.models.entry import ModelInput, register_model

_CONFIGS: dict[str, list[int | str]] = {
    "small": [64, "M", 128, "M", 256, 256, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class SmallVGG(nn.Module):
    def __init__(self, inp: ModelInput, config: list[int | str], width: int = 64, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, side = inp.channels, inp.size
        for item in config:
            if item == "M":
                if side >= 2:
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
                continue
            cout = max(1, int(item) * width // 64)
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, inp.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register_model("vgg_small", "VGG-style: 64-M-128-M-256-256-M with BatchNorm, global pool (args: width, dropout)")
def vgg_small(inp: ModelInput, width: int = 32, dropout: float = 0.3) -> nn.Module:
    return SmallVGG(inp, _CONFIGS["small"], width, dropout)


@register_model("vgg11_cifar", "VGG-11 with BatchNorm and a global-pool head, for small images (args: width, "
                "dropout)")
def vgg11_cifar(inp: ModelInput, width: int = 64, dropout: float = 0.3) -> nn.Module:
    return SmallVGG(inp, _CONFIGS["vgg11"], width, dropout)


@register_model("vgg16_cifar", "the notes' VGG-16 (docs/cookbook.md §10) with BatchNorm and a global-pool head, "
                "for small images (args: width, dropout)")
def vgg16_cifar(inp: ModelInput, width: int = 64, dropout: float = 0.3) -> nn.Module:
    return SmallVGG(inp, _CONFIGS["vgg16"], width, dropout)
