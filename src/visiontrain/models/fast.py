"""A convnet built for time-to-accuracy: the network of ``--recipe fast``.

Every full-resolution layer is paid for on every image, so each conv is followed at once by a 2x2 max-pool,
and BatchNorm and ReLU run on the pooled (4x smaller) map: conv → pool → BN → ReLU. Pooling before the
normalization changes the function a little (BN may flip signs), not what the net can learn, and on a
2-core CPU it measured faster than conv → BN → ReLU → pool (see docs/benchmarks.md). Convs are unpadded
("valid") by default: on 28 px digits that drops border pixels that hold no ink and shrinks every map.

>>> from visiontrain.models.factory import ModelInput
>>> net = fast_cnn(ModelInput(1, 28, 10))
>>> net(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from visiontrain.models.entry import ModelInput, register_model


def _stage(cin: int, cout: int, kernel: int, padding: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return [nn.Conv2d(cin, cout, kernel, padding=padding, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


@register_model("fast_cnn", "time-to-accuracy convnet of --recipe fast: conv-pool-BN-ReLU stages, then an MLP "
                "head", min_size=12)
def fast_cnn(inp: ModelInput, widths: list[int] | None = None, kernels: list[int] | None = None,
             hidden: int = 256, padding: int = 0, dropout: float = 0.0) -> nn.Module:
    """``widths`` channels per stage (each halves the side), ``kernels`` their kernel sizes, ``hidden`` the
    width of the head's hidden layer (0 = none); ``padding`` per conv (0 = valid)."""
    widths = list(widths) if widths is not None else [24, 32]
    kernels = list(kernels) if kernels is not None else [5, 3][: len(widths)] + [3] * max(0, len(widths) - 2)
    if len(kernels) != len(widths):
        raise ValueError(f"kernels ({len(kernels)}) must give one size per stage of widths ({len(widths)})")
    layers: list[nn.Module] = []
    cin = inp.channels
    for width, kernel in zip(widths, kernels, strict=True):
        layers += _stage(cin, width, kernel, padding)
        cin = width
    features = nn.Sequential(*layers, nn.Flatten())
    with torch.no_grad():  # the flattened size for this input side, measured rather than computed by hand
        flat = features(torch.zeros(1, inp.channels, inp.size, inp.size)).shape[1]
    head: list[nn.Module] = [nn.Dropout(dropout)] if dropout else []
    head += [nn.Linear(flat, hidden), nn.ReLU(inplace=True)] if hidden else []
    return nn.Sequential(*features, *head, nn.Linear(hidden or flat, inp.num_classes))
