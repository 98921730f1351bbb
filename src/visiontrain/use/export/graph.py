"""Preprocessing inside the exported graph (``export --with-preprocessing``): the file takes the uint8 pixels of
images already at the saved size and returns what the task reads — probabilities (softmax; sigmoid per label for
multi-label), or the regression value — so a client needs no mean/std and no channel order of its own.

Only the *resize-free* part moves into the graph: the channel conversion (NHWC → NCHW, uint8 → float) and the
normalization ``(pixel / 255 - mean) / std``. Resizing and cropping to the saved size stay with the client (any
image library does them, and they would fix one input size in the graph anyway).

visiontrain still loads such a file for ``predict``/``serve``/``evaluate``: :func:`from_normalized` turns the
normalized float batch those pass back into pixels (exact: the pixels were uint8) and the probabilities back into
logits (their log: the softmax of it is the same distribution).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from visiontrain.data import Preprocessing

LAYOUTS = ("nhwc", "nchw")


class WithPreprocessing(nn.Module):
    """``model`` behind a uint8 input of ``layout`` and in front of the task's output function."""

    def __init__(self, model: nn.Module, prep: Preprocessing, layout: str, task: str) -> None:
        super().__init__()
        self.model, self.layout, self.task = model, layout, task
        shape = (1, prep.channels, 1, 1)
        # buffers, not Python floats: they become initializers, and (x/255 - m)/s folds into one Mul and one Sub
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(prep.std, dtype=torch.float32).reshape(shape)))
        self.register_buffer("shift", (torch.tensor(prep.mean, dtype=torch.float32)
                                       / torch.tensor(prep.std, dtype=torch.float32)).reshape(shape))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2) if self.layout == "nhwc" else pixels
        out = self.model(x.float() * self.scale - self.shift)
        return output_function(self.task)(out)


def output_function(task: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits → what a client of the task reads: class probabilities, per-label probabilities, or the value."""
    if task == "multilabel":
        return torch.sigmoid
    if task == "regression":
        return lambda x: x
    return lambda x: torch.softmax(x.float(), dim=1)


def pixel_shape(prep: Preprocessing, layout: str) -> list[Any]:
    """The input's shape as the metadata states it."""
    return ["batch", prep.size, prep.size, prep.channels] if layout == "nhwc" else \
        ["batch", prep.channels, prep.size, prep.size]


def to_pixels(x: torch.Tensor, prep: Preprocessing, layout: str) -> torch.Tensor:
    """A normalized float batch [N, C, H, W] back to the uint8 pixels it came from, in ``layout``."""
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    pixels = ((x.float() * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else pixels


def to_logits(out: torch.Tensor, task: str) -> torch.Tensor:
    """The graph's output back to logits: softmax(log p) = p, sigmoid(logit p) = p; tiny floors keep them finite."""
    if task == "regression":
        return out
    p = out.float().clamp(1e-30, 1.0)
    return torch.log(p) if task != "multilabel" else torch.log(p) - torch.log1p(-p.clamp(max=1 - 1e-7))


def from_normalized(forward: Callable[[torch.Tensor], torch.Tensor], meta: dict[str, Any],
                    prep: Preprocessing) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward of an export with preprocessing in its graph, as one taking normalized floats → logits."""
    layout, task = str(meta["input"].get("layout", "nhwc")), str(meta.get("task", "classification"))

    def forward_normalized(x: torch.Tensor) -> torch.Tensor:
        return to_logits(forward(to_pixels(x, prep, layout)), task)

    return forward_normalized


def has_preprocessing(meta: dict[str, Any]) -> bool:
    """Whether an export's metadata says its graph takes uint8 pixels."""
    return isinstance(meta.get("input"), dict) and meta["input"].get("dtype") == "uint8"
