"""Pretrained weights, offline: torchvision's weights enum names through the torch hub cache, or a file.

``--pretrained DEFAULT`` (or ``IMAGENET1K_V1``, or ``ResNet18_Weights.IMAGENET1K_V1``) resolves to a
torchvision weights entry whose file must already be in ``<torch hub dir>/checkpoints/`` — the place
``torchvision`` itself caches downloads. Nothing is downloaded: a missing file gets one line naming the
file, the folder to put it in, and the URL to fetch it from; a file whose SHA-256 does not begin with the hex
digits its name carries (``resnet18-f37072fd.pth``) is refused the same way (torch.hub checks that only while
downloading). ``--pretrained FILE`` takes a safetensors
file, a state_dict ``.pth`` (``weights_only``) or a visiontrain run, for any model.

The weights are loaded strictly into the architecture they were made for (its class count read from the
weights), then the input stem and the head are adapted to the data by :mod:`visiontrain.models.assembly`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from visiontrain.errors import CheckpointError, ModelError
from visiontrain.models.factory import ModelInput, create_model, get_entry
from visiontrain.models.partial import load_partial
from visiontrain.models.rebuild import read_model_weights
from visiontrain.models.surgery import adapt_input_channels, find_head, find_stem
from visiontrain.models.zoo import on_meta  # shapes only: no memory, no time

_FILE_SUFFIXES = {".pth", ".pt", ".bin", ".tar", ".ckpt", ".safetensors", ".json", ".pkl"}
# Builder arguments torchvision sets when it loads these weights itself (they change the forward pass).
IMPLIED_ARGS = {"inception_v3": {"transform_input": True}, "googlenet": {"transform_input": True}}
# Auxiliary heads in the published files that visiontrain builds without (see torchvision_models).
_AUX_PREFIXES = {"inception_v3": ("AuxLogits.",), "googlenet": ("aux1.", "aux2.")}
# Old DenseNet files name 'norm.1' what the module now calls 'norm1' (torchvision fixes it the same way).
_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                           r"((?:[12])\.(?:weight|bias|running_mean|running_var))$")


@dataclass
class Pretrained:
    """A model with pretrained weights loaded, before head replacement."""

    model: nn.Module
    num_classes: int  # the class count the weights were trained for
    implied_args: dict = field(default_factory=dict)  # builder args the weights need (saved with the run)
    mean: tuple[float, ...] | None = None  # the weights' own normalization, when they say
    std: tuple[float, ...] | None = None
    description: str = ""


def is_file_value(value: str) -> bool:
    return os.sep in value or "/" in value or Path(value).suffix.lower() in _FILE_SUFFIXES or Path(value).exists()


def load_pretrained(name: str, args: dict, inp: ModelInput, value: str, trust_pickle: bool = False,
                    check_hash: bool = True) -> Pretrained:
    """Build ``name`` as the weights ``value`` need it, load them strictly, adapt the stem to ``inp``.

    A weights file (here one made on the spot), for gray 32 px images:

    >>> from safetensors.torch import save_file
    >>> save_file(create_model("resnet18", ModelInput(3, 224, 1000)).state_dict(), "resnet18.safetensors")
    >>> p = load_pretrained("resnet18", {}, ModelInput(1, 32, 10), "resnet18.safetensors")
    >>> p.num_classes, p.model.conv1.in_channels  # the file's head (assembly replaces it); the stem made gray
    (1000, 1)

    torchvision's ImageNet weights, when their file is in the torch hub cache (never downloaded here):

    >>> p = load_pretrained("resnet18", {}, ModelInput(3, 224, 10), "DEFAULT")  # doctest: +SKIP
    >>> p.num_classes, p.mean  # doctest: +SKIP
    (1000, (0.485, 0.456, 0.406))
    """
    if is_file_value(value):
        return _from_file(name, args, inp, Path(value), trust_pickle)
    return _from_enum(name, args, inp, value, check_hash)


def hub_file(url: str) -> Path:
    """Where torchvision caches the file of ``url``: ``<torch hub dir>/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def weights_entry(name: str, value: str):
    """The torchvision weights enum member for ``value`` (``DEFAULT``, ``IMAGENET1K_V1``, full name)."""
    import torchvision

    if name.startswith("timm/"):
        raise ModelError(f"--pretrained {value!r}: timm weights are not fetched offline; pass a weights file "
                         "(.safetensors or a state_dict .pth) instead")
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise ModelError(f"--pretrained {value!r}: {name!r} has no torchvision weights; pass a weights file "
                         "(.safetensors, a state_dict .pth or a run folder) instead") from None
    key = value.rsplit(".", 1)[-1].upper()
    if key not in enum.__members__:
        raise ModelError(f"--pretrained {value!r}: {name} has weights {', '.join(enum.__members__)}; or pass a "
                         "weights file")
    return enum[key]


def check_hub_hash(path: Path, url: str) -> None:
    """The file's SHA-256 must begin with the hex digits its name carries (``resnet18-f37072fd.pth``), which
    torch.hub checks only while downloading: a file saved under that name later is caught here.

    >>> from hashlib import sha256
    >>> _ = Path("w.bin").write_bytes(b"weights")
    >>> good = Path(f"w-{sha256(b'weights').hexdigest()[:8]}.pth")
    >>> _ = Path("w.bin").rename(good)
    >>> check_hub_hash(good, "https://example.org/" + good.name)  # passes: nothing to say
    """
    match = torch.hub.HASH_REGEX.search(path.name)
    prefix = match.group(1) if match else ""
    if not prefix:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    if digest.hexdigest()[: len(prefix)] != prefix:
        raise CheckpointError(f"{path}: its SHA-256 begins {digest.hexdigest()[:len(prefix)]}, not {prefix} as its "
                              f"name says, so it is not the file published at {url} (a broken download, or other "
                              "weights saved under its name); delete it and fetch it again from that URL, or pass "
                              "your own weights by path (--pretrained FILE)")


def _from_enum(name: str, args: dict, inp: ModelInput, value: str, check_hash: bool = True) -> Pretrained:
    weights = weights_entry(name, value)
    path = hub_file(weights.url)
    if not path.is_file():
        raise ModelError(f"pretrained weights {type(weights).__name__}.{weights.name} are not in the torch hub "
                         f"cache and visiontrain does not download: put {path.name} into {path.parent} (get it "
                         f"from {weights.url}), or set TORCH_HOME to a folder whose hub/checkpoints/ has it")
    if check_hash:
        check_hub_hash(path, weights.url)
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download looks like many kinds of error
        raise CheckpointError(f"{path}: cannot read these cached weights ({type(exc).__name__}); delete the file "
                              f"and fetch it again from {weights.url}") from None
    implied = dict(IMPLIED_ARGS.get(name, {})) if inp.channels == 3 else {}
    transforms = weights.transforms()
    crop = getattr(transforms, "crop_size", None)
    described = f"{type(weights).__name__}.{weights.name}" + (f" (made for {crop[0]} px)" if crop else "")
    model = _build_and_load(name, {**args, **implied}, inp, tensors, len(weights.meta["categories"]), described,
                            channels=3)
    mean, std = getattr(transforms, "mean", None), getattr(transforms, "std", None)
    return Pretrained(model, len(weights.meta["categories"]), implied,
                      tuple(mean) if mean else None, tuple(std) if std else None, described)


def _from_file(name: str, args: dict, inp: ModelInput, path: Path, trust_pickle: bool = False) -> Pretrained:
    weights = read_model_weights(path, trust_pickle=trust_pickle)
    tensors = weights.tensors
    probe = _probe(name, args, inp)
    head_key = find_head(probe, inp.num_classes) + ".weight"
    if head_key not in tensors:
        raise ModelError(f"--pretrained {path}: has no {head_key!r}, so it is not a complete {name} state_dict; "
                         "for a partial load use --init-from (by name, --rename or --init-match order)")
    stem_key = find_stem(probe) + ".weight" if any(isinstance(m, nn.Conv2d) for m in probe.modules()) else None
    channels = int(tensors[stem_key].shape[1]) if stem_key in tensors else inp.channels
    num_classes = int(tensors[head_key].shape[0])
    model = _build_and_load(name, args, inp, tensors, num_classes, str(path), channels=channels)
    return Pretrained(model, num_classes, description=str(path))


def _probe(name: str, args: dict, inp: ModelInput) -> nn.Module:
    with on_meta():
        return create_model(name, inp, args)


def _build_and_load(name: str, args: dict, inp: ModelInput, tensors: dict, num_classes: int, described: str,
                    channels: int) -> nn.Module:
    entry = get_entry(name)
    if entry.channels is not None and channels != entry.channels and not entry.adapt_channels:
        raise ModelError(f"--pretrained {described}: weights for {channels}-channel input, {name} takes "
                         f"{entry.channels}")
    model = create_model(name, replace(inp, channels=channels, num_classes=num_classes), args)
    tensors = _fix_keys(name, tensors, model)
    try:
        load_partial(model, tensors, strict=True, source=f"--pretrained {described}")
    except ModelError as exc:
        raise ModelError(f"{exc}; the weights do not fit {name} built for {inp.size} px input with args {args}: "
                         "match the size they were made for (--image-size) or use --init-from") from None
    if channels != inp.channels:
        adapt_input_channels(model, inp.channels)
    return model


def _fix_keys(name: str, tensors: dict, model: nn.Module) -> dict:
    own = model.state_dict()
    drop = tuple(p for p in _AUX_PREFIXES.get(name, ()) if not any(k.startswith(p) for k in own))
    out = {}
    for key, value in tensors.items():
        if drop and key.startswith(drop):
            continue
        match = _DENSENET_KEY.match(key) if name.startswith("densenet") else None
        out[match.group(1) + match.group(2) if match else key] = value
    return out
