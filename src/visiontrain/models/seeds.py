"""The networks of the study notes (docs/cookbook.md §4, the layer demos, shows each beside its original), adapted
to any input size, channel count and class count.

Each keeps the layer structure of its original so a learner recognises it; only the sizes hard-coded there for one
dataset (``Linear(1024, 64)`` for 32 px CIFAR) are computed from the input instead.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from visiontrain.models.entry import ModelInput, register_model


def _flat_features(features: nn.Module, inp: ModelInput) -> int:
    # Run the feature extractor once on a dummy input: exact for any size, no hand arithmetic to get wrong.
    with torch.no_grad():
        return features(torch.zeros(1, inp.channels, inp.size, inp.size)).flatten(1).shape[1]


@register_model("small_cnn", "fast BatchNorm CNN (the default): 3 conv-BN-ReLU-pool blocks", min_size=8)
def small_cnn(inp: ModelInput, width: int = 16, dropout: float = 0.0) -> nn.Module:
    # Pool after every block: the full-resolution layer is the cost on a CPU, so it stays narrow.
    def block(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True), nn.MaxPool2d(2)]

    w = width
    features = nn.Sequential(*block(inp.channels, w, 5), *block(w, 2 * w), *block(2 * w, 4 * w), nn.Flatten())
    head = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(*features, *head, nn.Linear(_flat_features(features, inp), inp.num_classes))


@register_model("cifar10_net", "the notes' CIFAR10 Model / Tudui (docs/cookbook.md §4): Conv5-Pool x3, "
                "Linear 1024-64-10", min_size=8)
def cifar10_net(inp: ModelInput) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(inp.channels, 32, 5, padding=2), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 5, padding=2), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return nn.Sequential(*features, nn.Linear(_flat_features(features, inp), 64), nn.Linear(64, inp.num_classes))


class _ConvBlock(nn.Module):
    """Conv3x3 → ReLU → optional MaxPool, as in seed 001 §3.4 (docs/cookbook.md §4)."""

    def __init__(self, cin: int, cout: int, use_pool: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2) if use_pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x)))


class ConvNet(nn.Module):
    """The notes' MNIST ConvNet (seed 001 §3.4, docs/cookbook.md §4): two conv blocks, then 1024-256-classes with
    dropout."""

    def __init__(self, inp: ModelInput, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = _ConvBlock(inp.channels, 32)
        self.conv2 = _ConvBlock(32, 64)
        flat = 64 * (inp.size // 4) ** 2
        self.classifier = nn.Sequential(
            nn.Linear(flat, 1024), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(1024, 256), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(256, inp.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.conv2(self.conv1(x)), 1))


@register_model("mnist_convnet", "the notes' MNIST ConvNet (docs/cookbook.md §4): 2 conv blocks, 1024-256 MLP")
def mnist_convnet(inp: ModelInput, dropout: float = 0.5) -> nn.Module:
    return ConvNet(inp, dropout)


class SeedNet(nn.Module):
    """The FashionMNIST Net of seed 002 (docs/cookbook.md §14, FashionMNIST): conv5 → conv3 → ReLU → pool → one
    Linear."""

    def __init__(self, inp: ModelInput) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp.channels, 32, kernel_size=5, stride=1, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU()
        self.max_pool = nn.MaxPool2d(kernel_size=2, stride=2)
        side = (inp.size - 2) // 2  # conv5 with padding 1 trims 2 px; the pool halves
        self.fc1 = nn.Linear(side * side * 64, inp.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.max_pool(self.relu(self.conv2(self.conv1(x))))
        return self.fc1(torch.flatten(x, 1))


@register_model("seed_net", "the notes' FashionMNIST Net (docs/cookbook.md §14): conv5, conv3, ReLU, pool, Linear",
                min_size=8)
def seed_net(inp: ModelInput) -> nn.Module:
    return SeedNet(inp)


@register_model("lenet5", "LeNet-5: conv5-pool-conv5-pool, 120-84 MLP (Tanh as in the original)", min_size=16)
def lenet5(inp: ModelInput, activation: str = "tanh") -> nn.Module:
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}.get(activation)
    if act is None:
        raise ValueError("activation must be 'tanh' or 'relu'")
    features = nn.Sequential(
        nn.Conv2d(inp.channels, 6, 5, padding=2), act(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), act(), nn.AvgPool2d(2), nn.Flatten(),
    )
    flat = _flat_features(features, inp)
    return nn.Sequential(*features, nn.Linear(flat, 120), act(), nn.Linear(120, 84), act(),
                         nn.Linear(84, inp.num_classes))


@register_model("mlp", "multi-layer perceptron on flattened pixels", min_size=1)
def mlp(inp: ModelInput, hidden: list[int] | None = None, dropout: float = 0.0) -> nn.Module:
    sizes = [inp.channels * inp.size * inp.size, *(hidden if hidden is not None else [256, 128])]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers, nn.Linear(sizes[-1], inp.num_classes))
