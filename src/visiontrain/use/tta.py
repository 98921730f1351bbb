"""Test-time augmentation: average the class probabilities of a few views of each image.

Views are cut from the *normalized* float batch on its device, so the same code serves a checkpoint, an
ONNX/TorchScript/pt2 export and the evaluation loop. Flips and crops commute with per-channel
normalization, and the resize before five-crop is a weighted average whose weights sum to one, so cutting
after normalizing gives the same input as normalizing after cutting.

The result is returned as logits, ``log(mean(softmax(view logits)))``: softmax of it is exactly the
averaged probability, so accuracy, cross-entropy and calibration are all measured on the averaged output.

>>> forward = lambda x: x.mean(dim=(2, 3))  # a toy "model": 3 channels → 3 logits
>>> tta_logits(forward, torch.zeros(2, 3, 8, 8), "flip").shape
torch.Size([2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from visiontrain.errors import ConfigError

Forward = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> list[torch.Tensor]:
    return [x]


def _flip(x: torch.Tensor) -> list[torch.Tensor]:
    return [x, x.flip(-1)]


def _five_crop(x: torch.Tensor) -> list[torch.Tensor]:
    """Enlarge by 8/7 (as evaluation does for photos: 256 → 224) and take the four corners and the centre."""
    from torchvision.transforms.v2 import functional as F

    h, w = x.shape[-2:]
    enlarged = F.resize(x, [max(h + 1, round(h * 8 / 7)), max(w + 1, round(w * 8 / 7))], antialias=True)
    return list(F.five_crop(enlarged, [h, w]))


# mode → views of a normalized batch [B, C, H, W]; each view has the same shape.
TTA_MODES: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
    "none": _identity,
    "flip": _flip,
    "five-crop": _five_crop,
}


def check_tta(mode: str) -> str:
    """``mode`` if it is known, else a ConfigError listing the choices."""
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation {mode!r}; choose one of: {', '.join(TTA_MODES)}")
    return mode


def tta_logits(forward: Forward, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Logits of the averaged probabilities over the views of ``x`` (``x``: normalized float [B, C, H, W]).

    A 5-D batch [B, N, C, H, W] (a checkpoint whose own eval transforms end in FiveCrop/TenCrop) is
    treated as N views per image as well.
    """
    check_tta(mode)
    if x.dim() == 5:
        b, n = x.shape[:2]
        crops = forward(x.flatten(0, 1)).float().view(b, n, -1)
        return _average(list(crops.unbind(1))) if mode == "none" else _average(
            [tta_logits(forward, x[:, i], mode) for i in range(n)])
    views = TTA_MODES[mode](x)
    if len(views) == 1:
        return forward(views[0])
    # One forward pass over all views at once: bigger batches, fewer calls (matters for ONNX sessions).
    logits = forward(torch.cat(views)).float()
    return _average(list(logits.chunk(len(views))))


def _average(logits: list[torch.Tensor]) -> torch.Tensor:
    if len(logits) == 1:
        return logits[0]
    log_probs = torch.stack([torch.log_softmax(z.float(), dim=1) for z in logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))


class TTAModel(nn.Module):
    """``model`` whose forward averages over the views of ``mode`` (for loops that call ``model(x)``)."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        self.model = model
        self.mode = check_tta(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tta_logits(self.model, x, self.mode)


def check_multilabel_views(tta: str, crops: bool) -> None:
    """Test-time augmentation averages softmax probabilities (one class per image): not a multi-label model's."""
    if tta != "none" or crops:
        raise ConfigError("test-time augmentation (--tta, or crops in the eval transforms) is for one class per "
                          "image; a multi-label model predicts without it: drop --tta")
