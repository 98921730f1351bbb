"""Why the model decided: Grad-CAM heat maps (``predict --explain DIR``, :func:`gradcam`).

Grad-CAM weighs a convolutional stage's feature maps by the gradient of the class score with respect to them and
keeps the positive part: where the evidence for the class lies, at that stage's resolution, upsampled to the
image. The computation is the ``grad-cam`` package's (``pytorch_grad_cam.GradCAM``, the explain extra): it is
well kept, its hooks release themselves, and it offers the gradient-free variants (Ablation-CAM, Score-CAM) with
the same call should one be wanted. Only the target layer is visiontrain's choice (:func:`target_layer`).

>>> import visiontrain
>>> from visiontrain.use.explain import gradcam, target_layer
>>> model = visiontrain.load("runs/demo", device="cpu")
>>> target_layer(model.model)[0]
'10'
>>> maps = gradcam(model, torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
>>> maps.shape, float(maps.min()) >= 0, float(maps.max()) <= 1
(torch.Size([2, 32, 32]), True, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from visiontrain.errors import ConfigError
from visiontrain.fileio import atomic_write_bytes
from visiontrain.optional import require
from visiontrain.text import printable
from visiontrain.use.loading import LoadedModel, UsableModel


def target_layer(model: nn.Module, layer: str | None = None, size: int = 32,
                 channels: int = 3) -> tuple[str, nn.Module]:
    """The module Grad-CAM reads: ``layer`` (a name of ``model.named_modules()``, as ``--layer`` gives it) or,
    by default, the last module other than a pooling layer to produce a spatial feature map (a 4-D output larger
    than 1×1) in a forward pass — the end of the last convolutional stage, found the same way in the built-in
    nets, torchvision's (``layer4`` of a ResNet, ``features`` of a MobileNet …) and timm's, whatever their
    attribute names."""
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            raise ConfigError(f"--layer {layer!r} is not a module of this model; spatial ones: "
                              f"{', '.join(_spatial(model, size, channels)[-8:]) or 'none'}")
        return layer, modules[layer]
    found = _spatial(model, size, channels)
    if not found:
        raise ConfigError("this model has no convolutional stage (no module gives a spatial feature map), so "
                          "Grad-CAM has nothing to weigh; a vision transformer needs --layer and a reshape")
    return found[-1], modules[found[-1]]


# A pooling layer only coarsens the map before it (measured on small_cnn and the synthetic shapes: 55% of the
# heat inside the shape's box from the last max-pool's 4×4 map, 65% from the 8×8 map before it)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _spatial(model: nn.Module, size: int, channels: int) -> list[str]:
    """Names of the modules whose output is a feature map larger than 1×1, in the order they finish."""
    done: list[str] = []
    hooks = [module.register_forward_hook(
        # square, like the input: a transformer's 4-D attention tensors ([B, heads, tokens, dim]) are not maps
        lambda _m, _i, out, name=name: done.append(name) if isinstance(out, torch.Tensor) and out.dim() == 4
        and out.shape[-1] == out.shape[-2] > 1 else None)
        for name, module in model.named_modules() if name and not isinstance(module, _POOLS)]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(reversed(done)))[::-1]  # a module run twice counts where it last finished


def gradcam(model: LoadedModel, images: torch.Tensor, classes: Sequence[int] | None = None,
            layer: str | None = None) -> torch.Tensor:
    """Grad-CAM maps [B, H, W] in [0, 1] for a uint8 batch [B, C, H, W] at the model's size, each for the class
    in ``classes`` (default: the predicted one)."""
    require("pytorch_grad_cam", "explain")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if model.meta.get("task", "classification") == "regression":
        raise ConfigError("Grad-CAM explains a class score; this is a regression model")
    net = model.model
    _, module = target_layer(net, layer, model.prep.size, model.prep.channels)
    x = model.prep.normalizer()(images.to(model.device))
    if classes is None:
        with torch.no_grad():
            classes = net(x).argmax(1).tolist()
    with torch.enable_grad(), warnings.catch_warnings(), GradCAM(model=net, target_layers=[module]) as cam:
        warnings.simplefilter("ignore")  # the package warns about hooks on modules it re-uses
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    return torch.from_numpy(np.nan_to_num(maps).clip(0, 1)).float()


@torch.no_grad()
def occlusion(model: UsableModel, images: torch.Tensor, classes: Sequence[int] | None = None,
              patch: int | None = None) -> torch.Tensor:
    """The gradient-free alternative: how much the class's probability falls when a square of the image is hidden
    (filled with the mean pixel), square by square (side ``patch``, default 1/8 of the image, half-overlapping);
    maps [B, H, W] in [0, 1]. It needs only forward passes, so it explains an export as well as a checkpoint —
    at the cost of ~(2·8−1)² = 225 forward passes per batch (Zeiler & Fergus 2014)."""
    images = images.to(model.device)
    batch, _, height, width = images.shape
    side = patch or max(2, min(height, width) // 8)
    stride = max(1, side // 2)
    if classes is None:
        classes = model.logits(images).argmax(1).tolist()
    rows = torch.arange(batch)
    picked = torch.as_tensor(list(classes))
    base = torch.softmax(model.logits(images).float(), 1).cpu()[rows, picked]
    fill = (torch.tensor(model.prep.mean) * 255).round().to(torch.uint8).reshape(1, -1, 1, 1).to(images.device)
    heat, count = torch.zeros(batch, height, width), torch.zeros(height, width)
    for y in range(0, max(1, height - side + 1), stride):
        for x in range(0, max(1, width - side + 1), stride):
            hidden = images.clone()
            hidden[:, :, y:y + side, x:x + side] = fill
            drop = base - torch.softmax(model.logits(hidden).float(), 1).cpu()[rows, picked]
            heat[:, y:y + side, x:x + side] += drop.clamp(min=0).reshape(batch, 1, 1)
            count[y:y + side, x:x + side] += 1
    heat /= count.clamp(min=1)
    top = heat.flatten(1).amax(1).clamp(min=1e-12).reshape(batch, 1, 1)
    return heat / top


METHODS = ("gradcam", "occlusion")


def explain_maps(model: UsableModel, images: torch.Tensor, classes: Sequence[int] | None = None,
                 method: str = "gradcam", layer: str | None = None) -> torch.Tensor:
    """Heat maps [B, H, W] in [0, 1] by ``method``: "gradcam" (a checkpoint's PyTorch model) or "occlusion" (any
    model, exports included)."""
    if method not in METHODS:
        raise ConfigError(f"--explain-method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "occlusion":
        return occlusion(model, images, classes)
    if not isinstance(model, LoadedModel):
        raise ConfigError("Grad-CAM follows the PyTorch model's gradients, which an export does not have: give the "
                          "run folder or checkpoint, or use --explain-method occlusion (forward passes only)")
    return gradcam(model, images, classes, layer)


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.45) -> torch.Tensor:
    """The uint8 image [C, H, W] with the heat map [H, W] blended over it in the jet colours (red = most)."""
    from matplotlib import colormaps  # matplotlib: loaded when a picture is drawn

    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    colours = torch.from_numpy(colormaps["jet"](heat.numpy())[..., :3]).permute(2, 0, 1).float() * 255
    return ((1 - alpha) * rgb.float() + alpha * colours).round().clamp(0, 255).to(torch.uint8)


def overlay_png(image: torch.Tensor, heat: torch.Tensor, caption: str, method: str = "Grad-CAM") -> bytes:
    """One overlay as a PNG: the image, the heat map on it and the caption (class and probability) above."""
    from visiontrain.watch import plots  # matplotlib: loaded when a picture is drawn

    side = image.shape[-1]
    big = max(1, 224 // side)  # a 32 px image is a smudge at its own size: shown at ~224 px, pixels kept sharp
    both = torch.stack([image.expand(3, -1, -1) if image.shape[0] == 1 else image, overlay(image, heat)])
    both = both.repeat_interleave(big, dim=2).repeat_interleave(big, dim=3)
    return plots.png_bytes(plots.image_grid_figure(both, ["image", f"{method} (red: most evidence)"],
                                                   title=printable(caption), columns=2))


def write_overlays(folder: str | Path, items: Sequence[tuple[str, torch.Tensor, torch.Tensor, str]],
                   method: str = "Grad-CAM") -> list[Path]:
    """``(name, image, heat, caption)`` items as ``folder/<name>.png``; names made unique; returns the files."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for name, image, heat, caption in items:
        stem, n = Path(name).stem or "image", 1
        while f"{stem}.png" in used:
            n += 1
            stem = f"{Path(name).stem}-{n}"
        used.add(f"{stem}.png")
        written.append(atomic_write_bytes(out / f"{stem}.png", overlay_png(image, heat, caption, method)))
    return written


def explain_batch(model: UsableModel, images: torch.Tensor, tops: Sequence[Sequence[dict]], names: Sequence[str],
                  folder: str | Path, layer: str | None = None, method: str = "gradcam") -> list[Path]:
    """Overlays of a predicted uint8 batch, each for its top class (``predict``'s results), written to
    ``folder/<name>.png`` with the class and its probability as the caption."""
    classes = [top[0]["index"] for top in tops]
    heat = explain_maps(model, images, classes, method, layer)
    captions = [f"{top[0]['label']} {100 * top[0]['probability']:.2f}%" for top in tops]
    return write_overlays(folder, list(zip(names, images.cpu(), heat, captions, strict=True)),
                          "Grad-CAM" if method == "gradcam" else "occlusion")


def mass_inside(heat: torch.Tensor, box: tuple[int, int, int, int]) -> float:
    """The share of a heat map's total that lies inside ``box`` = (x0, y0, x1, y1), ends exclusive."""
    x0, y0, x1, y1 = box
    total = float(heat.sum())
    return float(heat[y0:y1, x0:x1].sum()) / total if total > 0 else 0.0
