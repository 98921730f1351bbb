"""Pretrained weights: torchvision's weights names, timm's pretrained configs, the Hugging Face Hub, a URL or a file.

``--pretrained`` alone (= ``DEFAULT``) or a weights name (``IMAGENET1K_V1``, ``ResNet18_Weights.IMAGENET1K_V1``)
resolves to a torchvision weights entry; for ``timm/<name>`` models to timm's ``pretrained_cfg`` (the default
one, or a tag: ``--pretrained a1_in1k``); ``hf-hub:ORG/NAME`` to a Hub repository (``model.safetensors`` and,
for timm, ``config.json``); ``https://…`` to a file. What is missing from the standard caches is downloaded
and verified first (:mod:`visiontrain.models.download`); offline, a missing file is one line naming the file, the
folder to put it in and where it comes from. A cache file whose SHA-256 does not begin with the hex digits its
name carries (``resnet18-f37072fd.pth``) is refused and removed. ``--pretrained FILE`` takes a safetensors
file, a state_dict ``.pth`` (``weights_only``) or a visiontrain run, for any model. Nothing is unpickled
beyond ``weights_only=True``.

The weights are loaded strictly into the architecture they were made for (its class count read from the
weights), then the input stem and the head are adapted to the data by :mod:`visiontrain.models.assembly`.
What the weights say about their input — side, resize, crop, interpolation, mean/std — and their class names
(:class:`WeightsInfo`) travel into the run.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from visiontrain.errors import CheckpointError, ModelError
from visiontrain.models.download import check_hub_hash, fetch_hf, fetch_url
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


@dataclass(frozen=True)
class WeightsInfo:
    """What published weights say about their input and output, known before their file is read."""

    size: int  # the side of the square crop they were evaluated at
    resize: int  # the shorter side is resized to this first
    interpolation: str  # "bilinear", "bicubic" (torchvision's InterpolationMode values)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list, repr=False)
    source: str = ""  # where the file comes from: a URL or hf-hub:ORG/NAME

    def eval_transforms(self) -> list[dict[str, Any]]:
        """The weights' own evaluation pipeline for photos: resize the shorter side, take the centre."""
        return [{"name": "Resize", "size": self.resize, "interpolation": self.interpolation},
                {"name": "CenterCrop", "size": [self.size, self.size]}]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "size": self.size, "resize": self.resize, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std), "eval_transforms": self.eval_transforms(),
                "classes": self.classes}


@dataclass
class Pretrained:
    """A model with pretrained weights loaded, before head replacement."""

    model: nn.Module
    num_classes: int  # the class count the weights were trained for
    implied_args: dict = field(default_factory=dict)  # builder args the weights need (saved with the run)
    mean: tuple[float, ...] | None = None  # the weights' own normalization, when they say
    std: tuple[float, ...] | None = None
    description: str = ""
    info: WeightsInfo | None = None  # published weights: their preprocessing and class names
    file: str = ""  # the file read (in a cache, for downloaded weights)


def is_file_value(value: str) -> bool:
    return os.sep in value or "/" in value or Path(value).suffix.lower() in _FILE_SUFFIXES or Path(value).exists()


def load_pretrained(name: str, args: dict, inp: ModelInput, value: str, trust_pickle: bool = False,
                    check_hash: bool = True, offline: bool = False) -> Pretrained:
    """Build ``name`` as the weights ``value`` need it, load them strictly, adapt the stem to ``inp``.

    A weights file (here one made on the spot), for gray 32 px images:

    >>> from safetensors.torch import save_file
    >>> save_file(create_model("resnet18", ModelInput(3, 224, 1000)).state_dict(), "resnet18.safetensors")
    >>> p = load_pretrained("resnet18", {}, ModelInput(1, 32, 10), "resnet18.safetensors")
    >>> p.num_classes, p.model.conv1.in_channels  # the file's head (assembly replaces it); the stem made gray
    (1000, 1)

    torchvision's ImageNet weights (downloaded into the torch hub cache when missing):

    >>> p = load_pretrained("resnet18", {}, ModelInput(3, 224, 10), "DEFAULT")  # doctest: +SKIP
    >>> p.num_classes, p.mean, p.info.classes[:2]  # doctest: +SKIP
    (1000, (0.485, 0.456, 0.406), ['tench', 'goldfish'])
    """
    if value.startswith(HF_PREFIX):
        return _from_hf(name, args, inp, value, offline)
    if value.startswith(("https://", "http://")):
        return _from_url(name, args, inp, value, check_hash, offline)
    if is_file_value(value):
        return _from_file(name, args, inp, Path(value), trust_pickle)
    if name.startswith("timm/"):
        return _from_timm(name, args, inp, value, offline)
    return _from_enum(name, args, inp, value, check_hash, offline)


HF_PREFIX = "hf-hub:"


def describe_weights(name: str, value: str | None, offline: bool = False) -> WeightsInfo | None:
    """What the weights ``value`` for model ``name`` say about their input and classes, without reading them
    (None for a file, a URL or a run: those do not say). ``hf-hub:`` repositories are asked for their config.

    >>> info = describe_weights("resnet18", "DEFAULT")
    >>> info.size, info.resize, info.interpolation, info.classes[:2]
    (224, 256, 'bilinear', ['tench', 'goldfish'])
    """
    if not value or value.startswith(("https://", "http://")):
        return None
    if value.startswith(HF_PREFIX):
        config = _hf_config(value.removeprefix(HF_PREFIX), offline)
        cfg = config.get("pretrained_cfg") if isinstance(config, dict) else None
        return _timm_info(cfg, value, config.get("label_names")) if isinstance(cfg, dict) else None
    if is_file_value(value):
        return None
    if name.startswith("timm/"):
        cfg = _timm_cfg(name, value)
        return _timm_info(cfg.to_dict(), f"{HF_PREFIX}{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url)
    return _enum_info(weights_entry(name, value))


def _enum_info(weights: Any) -> WeightsInfo:
    t = weights.transforms()
    mode = getattr(t, "interpolation", None)
    return WeightsInfo(int(t.crop_size[0]), int(t.resize_size[0]), str(getattr(mode, "value", "bilinear")),
                       tuple(t.mean), tuple(t.std), list(weights.meta["categories"]), weights.url)


def _timm_info(cfg: dict, source: str, labels: list | None = None) -> WeightsInfo:
    """timm's pretrained_cfg → WeightsInfo (resize = crop / crop_pct, as timm's own eval transform does)."""
    size = int((cfg.get("input_size") or (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    classes = [str(c) for c in labels] if labels else _imagenet_names(int(cfg.get("num_classes") or 0))
    return WeightsInfo(size, math.floor(size / crop_pct), str(cfg.get("interpolation") or "bicubic"),
                       tuple(cfg.get("mean") or (0.485, 0.456, 0.406)), tuple(cfg.get("std") or (0.229, 0.224, 0.225)),
                       classes, source)


def _imagenet_names(num_classes: int) -> list[str]:
    """ImageNet's class names, as torchvision words them (the first of each synset's names), for 1000 classes."""
    if num_classes != 1000:
        return []
    from timm.data import ImageNetInfo  # timm is there: this is a timm model's weights

    return [d.split(",")[0] for d in ImageNetInfo().label_descriptions()]


def _timm_cfg(name: str, value: str) -> Any:
    import timm

    base = name.removeprefix("timm/")
    tag = "" if value.upper() == "DEFAULT" else value.lower()
    try:
        cfg = timm.get_pretrained_cfg(f"{base}.{tag}" if tag else base, allow_unregistered=True)
    except RuntimeError:  # an unknown tag
        cfg = None
    if cfg is None:
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{base}.*")]
        raise ModelError(f"--pretrained {value!r}: timm has no such weights for {base}; it has "
                         f"{', '.join(tags) or 'none'} (or pass hf-hub:ORG/NAME or a weights file)")
    if not (cfg.hf_hub_id or cfg.url):
        raise ModelError(f"--pretrained {value!r}: timm's {base} config names no file to fetch; pass a weights file")
    return cfg


def _hf_config(repo: str, offline: bool) -> dict:
    path = fetch_hf(repo, "config.json", f"--pretrained {HF_PREFIX}{repo}", offline, missing_ok=True)
    if path is None:
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: the config.json of {HF_PREFIX}{repo} is not JSON ({exc})") from None
    return config if isinstance(config, dict) else {}


def _hf_weights(repo: str, what: str, offline: bool) -> Path:
    """The repository's weights: ``model.safetensors``, else the ``pytorch_model.bin`` older ones have."""
    path = fetch_hf(repo, "model.safetensors", what, offline, missing_ok=True)
    if path is None:
        path = fetch_hf(repo, "pytorch_model.bin", what, offline)
    assert path is not None  # fetch_hf raises rather than return None without missing_ok
    return path


def _read_tensors(path: Path, source: str) -> dict:
    try:
        return read_model_weights(path).tensors  # safetensors, or a .pth/.bin with weights_only
    except (CheckpointError, ModelError):
        raise
    except Exception as exc:  # a truncated download looks like many kinds of error
        path.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot read these cached weights ({type(exc).__name__}); removed it: run "
                              f"again to fetch it from {source}") from None


def _from_timm(name: str, args: dict, inp: ModelInput, value: str, offline: bool) -> Pretrained:
    cfg = _timm_cfg(name, value)
    what = f"--pretrained {value} for {name}"
    if cfg.hf_hub_id:
        path, source = _hf_weights(cfg.hf_hub_id, what, offline), f"{HF_PREFIX}{cfg.hf_hub_id}"
    else:
        path, source = fetch_url(cfg.url, what, offline), cfg.url
        check_hub_hash(path, cfg.url)
    info = _timm_info(cfg.to_dict(), source)
    return _from_tensors(name, args, inp, _read_tensors(path, source), f"{source} (made for {info.size} px)",
                         info, path)


def _from_hf(name: str, args: dict, inp: ModelInput, value: str, offline: bool) -> Pretrained:
    repo = value.removeprefix(HF_PREFIX)
    config = _hf_config(repo, offline)
    arch = config.get("architecture")
    if name.startswith("timm/") and isinstance(arch, str) and arch.split(".")[0] != name.removeprefix("timm/"):
        raise ModelError(f"--pretrained {value}: these are weights for timm/{arch}, not {name}; use --model "
                         f"timm/{arch}")
    info = describe_weights(name, value, offline)
    path = _hf_weights(repo, f"--pretrained {value}", offline)
    return _from_tensors(name, args, inp, _read_tensors(path, value), value, info, path)


def _from_url(name: str, args: dict, inp: ModelInput, url: str, check_hash: bool, offline: bool) -> Pretrained:
    path = fetch_url(url, f"--pretrained {url}", offline)
    if check_hash:
        check_hub_hash(path, url)
    return _from_tensors(name, args, inp, _read_tensors(path, url), url, None, path)


def weights_entry(name: str, value: str):
    """The torchvision weights enum member for ``value`` (``DEFAULT``, ``IMAGENET1K_V1``, full name)."""
    import torchvision

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


def _from_enum(name: str, args: dict, inp: ModelInput, value: str, check_hash: bool = True,
               offline: bool = False) -> Pretrained:
    weights = weights_entry(name, value)
    path = fetch_url(weights.url, f"pretrained weights {type(weights).__name__}.{weights.name}", offline)
    if check_hash:
        check_hub_hash(path, weights.url)
    tensors = _read_tensors(path, weights.url)
    implied = dict(IMPLIED_ARGS.get(name, {})) if inp.channels == 3 else {}
    transforms = weights.transforms()
    crop = getattr(transforms, "crop_size", None)
    described = f"{type(weights).__name__}.{weights.name}" + (f" (made for {crop[0]} px)" if crop else "")
    model = _build_and_load(name, {**args, **implied}, inp, tensors, len(weights.meta["categories"]), described,
                            channels=3)
    info = _enum_info(weights)
    return Pretrained(model, len(weights.meta["categories"]), implied, info.mean, info.std, described, info, str(path))


def _from_file(name: str, args: dict, inp: ModelInput, path: Path, trust_pickle: bool = False) -> Pretrained:
    tensors = read_model_weights(path, trust_pickle=trust_pickle).tensors
    return _from_tensors(name, args, inp, tensors, str(path), None, path)


def _from_tensors(name: str, args: dict, inp: ModelInput, tensors: dict, described: str, info: WeightsInfo | None,
                  path: Path) -> Pretrained:
    """A complete state_dict for ``name`` (its class count and input channels read from the tensors)."""
    probe = _probe(name, args, inp)
    head_key = find_head(probe, inp.num_classes) + ".weight"
    if head_key not in tensors:
        raise ModelError(f"--pretrained {described}: has no {head_key!r}, so it is not a complete {name} state_dict; "
                         "for a partial load use --init-from (by name, --rename or --init-match order)")
    stem_key = find_stem(probe) + ".weight" if any(isinstance(m, nn.Conv2d) for m in probe.modules()) else None
    channels = int(tensors[stem_key].shape[1]) if stem_key in tensors else inp.channels
    num_classes = int(tensors[head_key].shape[0])
    model = _build_and_load(name, args, inp, tensors, num_classes, described, channels=channels)
    mean, std = (info.mean, info.std) if info else (None, None)
    return Pretrained(model, num_classes, mean=mean, std=std, description=described, info=info, file=str(path))


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
