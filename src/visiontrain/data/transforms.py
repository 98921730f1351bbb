"""Transforms as data: lists of ``{"name": "Resize", "size": 32}`` built with torchvision.transforms.v2.

Specs (not Python objects) are what a checkpoint stores, so ``predict`` and ``serve`` rebuild exactly the
evaluation pipeline a model was trained with. Only the names below can be built: a spec from a file never
names arbitrary code. Transforms work on uint8 image tensors [C,H,W] or batches [B,C,H,W]; conversion to
float and normalization happen once per batch on the training device (see ``loaders.Normalizer``), so a
``Normalize`` spec sets that step's mean/std instead of running inside the uint8 pipeline.

>>> pipeline = build_transforms([{"name": "RandomCrop", "size": 32, "padding": 4}, {"name": "RandomHorizontalFlip"}])
>>> pipeline(torch.zeros(3, 32, 32, dtype=torch.uint8)).shape
torch.Size([3, 32, 32])
>>> build_transforms([{"name": "os.system"}])
Traceback (most recent call last):
...
visiontrain.errors.ConfigError: transforms: unknown transform 'os.system'; choose one of: AugMix, AutoAugment, ...
"""

from __future__ import annotations

import inspect
import platform
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from visiontrain.errors import ConfigError

if TYPE_CHECKING:
    from torchvision.transforms import v2

Spec = dict[str, Any]

ALLOWED: tuple[str, ...] = (  # torchvision.transforms.v2 classes by name, imported when one is built or checked
    "Resize", "CenterCrop", "RandomCrop", "RandomResizedCrop", "FiveCrop", "TenCrop", "Pad", "RandomHorizontalFlip",
    "RandomVerticalFlip", "RandomRotation", "RandomAffine", "RandomPerspective", "ColorJitter", "Grayscale",
    "RandomGrayscale", "GaussianBlur", "RandomErasing", "AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix",
)
# Accepted so that pipelines copied from the notes (docs/cookbook.md §2, transforms) work: the loaders already
# yield tensors, and
# Normalize becomes the on-device normalization (see split_normalize).
PASSTHROUGH = frozenset({"ToTensor", "ToImage", "Normalize"})
# Same output for the same input: these may be cached (applied once) and run on a whole batch at once.
DETERMINISTIC = frozenset({"Resize", "CenterCrop", "Pad", "Grayscale", "FiveCrop", "TenCrop"})
MULTI_CROP = {"FiveCrop": 5, "TenCrop": 10}
_ENUMS = {"interpolation": "InterpolationMode", "policy": "AutoAugmentPolicy"}  # v2 enums, by name


def _v2() -> Any:
    # torchvision costs ~2 CPU-s to import (its ops load torch._dynamo): only when a v2 transform is built or
    # checked, never by a `predict` whose evaluation pipeline `eval_transform` computes with torch alone
    from torchvision.transforms import v2

    return v2

# Training augmentation presets: name -> specs for a square input side.
PRESETS: dict[str, Callable[[int], list[Spec]]] = {
    "none": lambda size: [],
    "digits": lambda size: [{"name": "RandomCrop", "size": size, "padding": max(1, size // 14)}],
    "cifar": lambda size: [{"name": "RandomCrop", "size": size, "padding": max(1, size // 8)},
                           {"name": "RandomHorizontalFlip"}],
    "photos": lambda size: [{"name": "RandomResizedCrop", "size": [size, size], "scale": [0.35, 1.0]},
                            {"name": "RandomHorizontalFlip"}],
    "strong": lambda size: [{"name": "RandomResizedCrop", "size": [size, size], "scale": [0.25, 1.0]},
                            {"name": "RandomHorizontalFlip"}, {"name": "TrivialAugmentWide"},
                            {"name": "RandomErasing", "p": 0.25}],
}
PHOTO_MARGIN = 8 / 7  # evaluation resizes photos to size*8/7 then takes the centre (256 → 224, as torchvision)


def check_specs(specs: Any, where: str) -> list[Spec]:
    """Validate a spec list (names and argument names) without building anything heavy."""
    if not isinstance(specs, list | tuple):
        raise ConfigError(f"{where}: expected a list of transforms like [{{name: RandomCrop, size: 32}}], "
                          f"got {specs!r}")
    out = []
    for spec in specs:
        if isinstance(spec, str):  # a bare name: "RandomHorizontalFlip"
            spec = {"name": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ConfigError(f"{where}: transform {spec!r} must be a mapping with a 'name'")
        name = spec["name"]
        if name not in ALLOWED and name not in PASSTHROUGH:
            raise ConfigError(f"{where}: unknown transform {name!r}; choose one of: "
                              f"{', '.join(sorted({*ALLOWED, *PASSTHROUGH}))}")
        if name in ALLOWED:
            params = [p for p in inspect.signature(getattr(_v2(), name).__init__).parameters if p != "self"]
            bad = [k for k in spec if k != "name" and k not in params]
            if bad:
                raise ConfigError(f"{where}: transform {name} has no argument {bad[0]!r}; it takes: "
                                  f"{', '.join(params) or 'no arguments'}")
        out.append(dict(spec))
    return out


def build_transforms(specs: list[Spec], where: str = "transforms") -> v2.Compose:
    """Build ``v2.Compose`` from specs; unknown names or bad arguments are a ConfigError.

    ``FiveCrop``/``TenCrop`` return their crops stacked into one tensor [N, C, H, W] (test-time augmentation).
    """
    steps: list[Callable] = []
    for spec in check_specs(specs, where):
        name = spec["name"]
        if name in PASSTHROUGH:
            continue
        steps.append(build_one(spec, where))
        if name in MULTI_CROP:
            steps.append(StackCrops())
    v2 = _v2()
    return v2.Compose(steps or [v2.Identity()])


def build_one(spec: Spec, where: str = "transforms") -> Callable:
    name = spec["name"]
    kwargs = {k: _enum(k, v, name, where) for k, v in spec.items() if k != "name"}
    if name in ("Resize", "RandomResizedCrop"):
        kwargs.setdefault("antialias", True)
    try:
        return getattr(_v2(), name)(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: transform {name} with {kwargs}: {exc}") from None


class StackCrops:
    """The tuple of FiveCrop/TenCrop as one tensor [N, C, H, W] (a class, so workers can pickle it)."""

    def __call__(self, crops: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.stack(list(crops))


def eval_transform(specs: list[Spec], where: str = "transforms") -> Callable[[torch.Tensor], torch.Tensor]:
    """The evaluation pipeline for uint8 image tensors ([C,H,W] or batches), as :func:`build_transforms` builds
    it — but when it is only ``Resize`` (bilinear, antialiased: the default) and ``CenterCrop`` with a size,
    what every run's evaluation is (:func:`eval_specs`), torch computes it alone (:class:`TensorEval`, equal to
    torchvision's output bit for bit) and ``predict`` starts without importing torchvision (~2 CPU-s)."""
    if all(_torch_only(spec) for spec in specs):
        return TensorEval(specs)
    return build_transforms(specs, where)


def _torch_only(spec: Any) -> bool:
    if not isinstance(spec, dict) or spec.get("name") not in ("Resize", "CenterCrop"):
        return False
    extra = set(spec) - {"name", "size"}
    if spec["name"] == "Resize" and extra == {"antialias"} and spec["antialias"] is True:
        extra = set()
    size = spec.get("size")
    sizes = [size] if isinstance(size, int) else size if isinstance(size, list | tuple) else None
    plain = sizes is not None and len(sizes) in (1, 2) and all(type(v) is int and v > 0 for v in sizes)
    return not extra and plain


class TensorEval:
    """``Resize`` and ``CenterCrop`` specs on uint8 tensors, computed as torchvision.transforms.v2 computes them on
    tensors (its ``resize_image`` and ``center_crop_image``: the same output sizes, the same antialiased bilinear
    kernel, on uint8 directly where torchvision uses it), without importing torchvision; the tests compare the two
    bit for bit."""

    def __init__(self, specs: list[Spec]) -> None:
        self.steps = [(spec["name"], spec["size"]) for spec in specs]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        for name, size in self.steps:
            image = _resize(image, size) if name == "Resize" else _center_crop(image, size)
        return image


def _resize(image: torch.Tensor, size: int | list[int]) -> torch.Tensor:
    shape = image.shape
    channels, height, width = shape[-3:]
    sizes = [size] if isinstance(size, int) else list(size)
    if len(sizes) == 1:  # the shorter side to this, the longer in proportion (rounded down)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = sizes[0], int(sizes[0] * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    else:
        new_h, new_w = sizes
    if (new_h, new_w) == (height, width):
        return image
    if image.numel() > 0:
        dtype = image.dtype
        native = dtype in (torch.float32, torch.float64) or (dtype == torch.uint8 and image.device.type == "cpu" and
                                                            _native_uint8_resize())
        x = image.reshape(-1, channels, height, width)
        strides = x.stride()
        if x.is_contiguous(memory_format=torch.channels_last) and x.shape[0] == 1 and image.numel() != strides[0]:
            # as torchvision does, so that the output keeps the input's memory format (the kernel differs)
            x = x.as_strided((1, channels, height, width), [image.numel(), *strides[1:]])
        x = x if native else x.to(torch.float32)
        x = F.interpolate(x, size=[new_h, new_w], mode="bilinear", align_corners=False, antialias=True)
        if not native:
            x = (x.round_() if not dtype.is_floating_point else x).to(dtype)
        image = x
    return image.reshape((*shape[:-3], channels, new_h, new_w))


def _native_uint8_resize() -> bool:
    # torchvision resizes uint8 on the CPU without a float copy where torch has the vectorized kernel for it
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64",
                                                                                                   "arm64")


def _center_crop(image: torch.Tensor, size: int | list[int]) -> torch.Tensor:
    sizes = [size] if isinstance(size, int) else list(size)
    crop_h, crop_w = (sizes[0], sizes[0]) if len(sizes) == 1 else sizes
    if image.numel() == 0:
        return image.reshape((*image.shape[:-2], crop_h, crop_w))
    height, width = image.shape[-2:]
    if crop_h > height or crop_w > width:  # zero padding around, the odd pixel on the right/bottom
        left, top = max(crop_w - width, 0) // 2, max(crop_h - height, 0) // 2
        right, bottom = (max(crop_w - width, 0) + 1) // 2, (max(crop_h - height, 0) + 1) // 2
        image = F.pad(image, [left, right, top, bottom], value=0.0)
        height, width = image.shape[-2:]
        if (crop_h, crop_w) == (height, width):
            return image
    top, left = round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)  # Python rounds halves to even, as there
    return image[..., top:top + crop_h, left:left + crop_w]


def _enum(key: str, value: Any, name: str, where: str) -> Any:
    if key not in _ENUMS or not isinstance(value, str):
        return value
    kind = getattr(_v2(), _ENUMS[key])
    try:
        return kind(value.lower())
    except ValueError:
        raise ConfigError(f"{where}: transform {name}: {key} {value!r} is not one of "
                          f"{', '.join(m.value for m in kind)}") from None


def split_normalize(specs: list[Spec]) -> tuple[list[Spec], tuple[tuple[float, ...], tuple[float, ...]] | None]:
    """Specs without ToTensor/Normalize, plus the (mean, std) of a Normalize spec if there is one."""
    stats = None
    for spec in specs:
        if spec.get("name") == "Normalize":
            try:
                stats = (tuple(float(v) for v in spec["mean"]), tuple(float(v) for v in spec["std"]))
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"transform Normalize needs mean and std lists, got {spec!r}") from None
            if len(stats[0]) != len(stats[1]) or min(stats[1], default=0) <= 0:
                raise ConfigError(f"transform Normalize: mean and std need the same length and std > 0: {spec!r}")
    return [s for s in specs if s.get("name") not in PASSTHROUGH], stats


def tta_crops(specs: list[Spec]) -> int:
    """How many crops per image a pipeline yields (FiveCrop → 5, TenCrop → 10, else 1)."""
    return next((MULTI_CROP[s["name"]] for s in specs if s.get("name") in MULTI_CROP), 1)


def is_deterministic(specs: list[Spec]) -> bool:
    return all(s["name"] in DETERMINISTIC or s["name"] in PASSTHROUGH for s in specs)


def eval_specs(size: int, from_files: bool, native: int | None = None) -> list[Spec]:
    """The deterministic evaluation pipeline: a square ``size`` input, never distorted for photos.

    Photos (files of mixed sizes) are resized to ``size * 8/7`` on the shorter side, then the centre is
    taken, as torchvision's references do (256 → 224). Fixed-size images are only resized when needed.
    """
    if from_files and native is None:
        return [{"name": "Resize", "size": margin_size(size)}, {"name": "CenterCrop", "size": [size, size]}]
    # Kept when the images already have that size: on them it is free, and `predict` needs it for files.
    return [{"name": "Resize", "size": [size, size]}]


def margin_size(size: int) -> int:
    return max(size, round(size * PHOTO_MARGIN))


def train_specs(size: int, preset: str, from_files: bool, native: int | None = None) -> list[Spec]:
    """The preset's augmentation, behind a resize to ``size`` when fixed-size images are another size."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown transform preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    aug = PRESETS[preset](size)
    if from_files and native is None:  # photos: the random crop itself sets the size, else centre-crop
        return aug if preset in ("photos", "strong") else eval_specs(size, True) + aug
    return eval_specs(size, from_files, native) + aug


def resolve(choices: dict[str, Any], size: int, preset: str, from_files: bool,
            native: int | None) -> tuple[list[Spec], list[Spec]]:
    """(train, eval) spec lists from the config's ``transforms`` mapping: a preset name or a list each.

    Missing entries get the source's defaults: its augmentation preset for train, ``eval_specs`` for eval.
    """
    unknown = set(choices) - {"train", "eval"}
    if unknown:
        raise ConfigError(f"data.transforms: unknown key {sorted(unknown)[0]!r}; use train and eval, e.g. "
                          "{train: cifar, eval: [{name: Resize, size: 32}]}")
    train = choices.get("train")
    if train is None or isinstance(train, str):
        train_list = train_specs(size, train or preset, from_files, native)
    else:
        train_list = check_specs(train, "data.transforms.train")
    evaluation = choices.get("eval")
    if isinstance(evaluation, str):
        raise ConfigError("data.transforms.eval must be a list of deterministic transforms, e.g. "
                          "[{name: Resize, size: 36}, {name: CenterCrop, size: 32}]")
    eval_list = eval_specs(size, from_files, native) if evaluation is None else check_specs(
        evaluation, "data.transforms.eval")
    return train_list, eval_list


def adapt_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray → RGB by repeating, RGB → gray by ITU-R 601 luma (Pillow's weights), on uint8 [..., C, H, W]."""
    have = x.shape[-3]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(3, 1, 1)
        gray = (x.float() * weights).sum(dim=-3, keepdim=True)
        return gray.round().clamp(0, 255).to(torch.uint8)
    raise ConfigError(f"cannot turn {have}-channel images into {channels}-channel input")
