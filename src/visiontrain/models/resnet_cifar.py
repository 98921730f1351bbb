"""CIFAR-style ResNets: a 3x3 stem without max-pooling, so 32 px inputs keep their detail.

``cifar_resnet20/32/56`` are He et al.'s CIFAR nets (three stages of 16/32/64 channels, 6n+2 layers);
``cifar_resnet18/34`` are He et al.'s ImageNet ResNet-18/34 with the 3x3 stem. Blocks are Conv-BN-ReLU;
shortcuts are 1x1 projections when the shape changes.
"""

from __future__ import annotations

import torch
from torch import nn

from visiontrain.models.entry import ModelInput, register_model


class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN layers plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3x3 → stages of BasicBlocks (stride 2 from the second stage on) → global pool → ``fc``."""

    def __init__(self, inp: ModelInput, blocks: list[int], widths: list[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(inp.channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, (n, cout) in enumerate(zip(blocks, widths, strict=True)):
            layers = [BasicBlock(cin if j == 0 else cout, cout, 2 if i > 0 and j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, inp.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _he(depth: int, width: int, inp: ModelInput) -> nn.Module:
    n = (depth - 2) // 6
    return CifarResNet(inp, [n] * 3, [width, 2 * width, 4 * width])


@register_model("cifar_resnet20", "He et al.'s CIFAR ResNet-20: 3x3 stem, 3 stages of 16/32/64 (arg: width)")
def cifar_resnet20(inp: ModelInput, width: int = 16) -> nn.Module:
    return _he(20, width, inp)


@register_model("cifar_resnet32", "He et al.'s CIFAR ResNet-32 (arg: width)")
def cifar_resnet32(inp: ModelInput, width: int = 16) -> nn.Module:
    return _he(32, width, inp)


@register_model("cifar_resnet56", "He et al.'s CIFAR ResNet-56 (arg: width)")
def cifar_resnet56(inp: ModelInput, width: int = 16) -> nn.Module:
    return _he(56, width, inp)


@register_model("cifar_resnet18", "ResNet-18 with a 3x3 stem and no max-pool, for 32 px inputs (arg: width)")
def cifar_resnet18(inp: ModelInput, width: int = 64) -> nn.Module:
    return CifarResNet(inp, [2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width])


@register_model("cifar_resnet34", "ResNet-34 with a 3x3 stem and no max-pool, for 32 px inputs (arg: width)")
def cifar_resnet34(inp: ModelInput, width: int = 64) -> nn.Module:
    return CifarResNet(inp, [3, 4, 6, 3], [width, 2 * width, 4 * width, 8 * width])
