"""Looking at models without training them: the zoo table, a layer table, which model fits a weights file.

Models are built on PyTorch's ``meta`` device — shapes without memory or time — so listing every
torchvision classifier or showing ViT-H's layers takes a moment, not gigabytes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from visiontrain.models import timm_models
from visiontrain.models.factory import MODELS, ModelInput, count_parameters, create_model, get_entry
from visiontrain.models.torchvision_models import classifier_names, family

# Factories whose results become parameters and buffers. Others (arange, tensor …) stay on the CPU so
# builders that compute layer widths with tensor maths (RegNet) still get real numbers.
_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
              torch.empty_strided, torch.eye}


class _MetaFactories(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        shape = _meta_shape(func, args)
        if shape is not None:
            return torch.empty(shape, dtype=args[0].dtype, device="meta")
        if func in _FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        else:
            target = _inplace_on_meta(func, args, kwargs)
            if target is not None:
                return target  # weight init (uniform_, normal_ …) on a meta tensor changes nothing: skip its cost
        return func(*args, **kwargs)


def _meta_shape(func: Any, args: tuple) -> tuple[int, ...] | None:
    """The output shape of a BatchNorm or Linear on a meta tensor. On meta, torch runs these as Python
    decompositions whose first call imports torch._dynamo (~1.5 CPU-s); `predict` checks a checkpoint's model on
    meta (models/checks.py) and must start quickly."""
    if not (len(args) >= 2 and isinstance(args[0], torch.Tensor) and args[0].is_meta):
        return None
    if func is F.batch_norm:
        return tuple(args[0].shape)
    if func is F.linear and isinstance(args[1], torch.Tensor):
        return (*args[0].shape[:-1], args[1].shape[0])
    return None


# In-place ops that only change values (weight init and its arithmetic), never shape or autograd flags.
_VALUE_OPS = {"uniform_", "normal_", "zero_", "fill_", "copy_", "mul_", "add_", "sub_", "div_", "clamp_",
              "erfinv_", "exponential_", "random_", "bernoulli_", "log_normal_", "kaiming_uniform_",
              "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "trunc_normal_", "constant_", "ones_",
              "zeros_", "orthogonal_", "eye_", "dirac_"}


def _inplace_on_meta(func, args, kwargs) -> torch.Tensor | None:
    if getattr(func, "__name__", "") not in _VALUE_OPS:
        return None
    first = args[0] if args else kwargs.get("tensor")
    return first if isinstance(first, torch.Tensor) and first.is_meta else None


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build models with their parameters on the ``meta`` device (shapes only)."""
    with _MetaFactories():
        yield


def all_names(pattern: str = "*", include_all: bool = False) -> list[str]:
    """Built-in names, plus torchvision classifiers with ``include_all``, plus ``timm/…`` for a timm glob."""
    names = list(MODELS) + (list(classifier_names()) if include_all else [])
    if pattern.startswith("timm/"):
        names = timm_models.names(pattern.removeprefix("timm/"))
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def default_input(name: str, num_classes: int = 10) -> ModelInput:
    entry = get_entry(name)
    return ModelInput(entry.channels or 1, entry.default_size or 28, num_classes)


def model_rows(pattern: str = "*", include_all: bool = False) -> list[dict[str, Any]]:
    """One row per model: name, parameters (10 classes, default input), default input, source, description."""
    rows = []
    for name in all_names(pattern, include_all):
        entry, inp = get_entry(name), default_input(name)
        with on_meta():
            params = count_parameters(create_model(name, inp))
        rows.append({"name": name, "parameters": f"{params:,}", "parameter_count": params,
                     "input": f"{inp.channels}x{inp.size}x{inp.size}",
                     "default_size": entry.default_size, "source": entry.source, "description": entry.description})
    return rows


def layer_rows(model: nn.Module, inp: ModelInput) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows (name, type, output shape, parameters, trainable) for every leaf module and every module that
    holds parameters itself, from one forward pass of a 1-image batch; plus the output shape."""
    shapes: dict[str, list[int]] = {}

    def record(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            first = output[0] if isinstance(output, tuple | list) else output
            if isinstance(first, torch.Tensor):
                shapes[name] = list(first.shape[1:])
        return hook

    shown = [(n, m) for n, m in model.named_modules()
             if n and (not list(m.children()) or list(m.parameters(recurse=False)))]
    handles = [m.register_forward_hook(record(n)) for n, m in shown]
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if device.type == "meta":
            model.to(device)  # buffers computed on the CPU while building (Swin's tables) join the params
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, inp.channels, inp.size, inp.size, device=device))
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, module in shown:
        own = list(module.parameters(recurse=False))
        trainable = [p.requires_grad for p in own]
        rows.append({"layer": name, "type": type(module).__name__,
                     "output": "x".join(map(str, shapes[name])) if name in shapes else "-",
                     "parameters": sum(p.numel() for p in own),
                     "trainable": "-" if not own else "yes" if all(trainable) else "no" if not any(trainable)
                     else "partly"})
    return rows, list(out.shape[1:])


@functools.cache
def _signature(name: str, channels: int, num_classes: int) -> tuple[tuple[str, tuple[int, ...]], ...] | None:
    try:
        inp = default_input(name, num_classes)
        with on_meta():
            sd = create_model(name, ModelInput(channels, inp.size, num_classes)).state_dict()
    except Exception:  # a model that cannot take this input simply does not fit
        return None
    return tuple((k, tuple(v.shape)) for k, v in sd.items() if not k.endswith("num_batches_tracked"))


def fitting_models(tensors: dict[str, torch.Tensor], limit: int = 5) -> list[dict[str, Any]]:
    """Registered models (and torchvision classifiers) whose state_dict has the file's tensor names;
    ``exact`` when every shape agrees too (for the class count and channels the file implies)."""
    keys = {k: tuple(v.shape) for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    convs = [s for s in keys.values() if len(s) == 4]
    channels = convs[0][1] if convs else 1
    heads = [s for s in keys.values() if len(s) in (2, 4) and (len(s) == 2 or s[2:] == (1, 1))]
    classes = heads[-1][0] if heads else 10
    found = []
    for name in _candidates(set(keys), channels, classes):
        sig = _signature(name, channels, classes)
        if sig is None or {k for k, _ in sig} != set(keys):
            continue
        differ = [k for k, s in sig if keys[k] != s]
        found.append({"name": name, "exact": not differ, "classes": classes, "channels": channels,
                      "shapes_differ": len(differ)})
    return sorted(found, key=lambda r: (not r["exact"], r["shapes_differ"]))[:limit]


def _candidates(keys: set[str], channels: int, classes: int) -> list[str]:
    """Built-in names, and the torchvision families whose first member shares most of the file's names
    (one probe per family instead of building all 80 classifiers)."""
    families: dict[str, list[str]] = {}
    for name in classifier_names():
        families.setdefault(family(name), []).append(name)
    names = list(MODELS)
    for members in families.values():
        probe = _signature(members[0], channels, classes)
        shared = len(keys & {k for k, _ in probe}) if probe else 0
        if shared * 2 >= min(len(keys), len(probe or ())):
            names += members
    return names
