"""Build a model by name for a dataset's shape: ``create_model("lenet5", ModelInput(1, 28, 10))``.

Every builder takes the input it must fit (channels, side, class count) plus its own keyword arguments, so
one name works on MNIST and on CIFAR alike. Names not registered here fall through to
``torchvision.models`` classifiers (``resnet18``, ``vgg16`` …) with ``num_classes`` set, and to ``timm``
models as ``timm/<name>`` when the optional ``timm`` package is installed. A name ``my_model.py:Tudui`` or
``mypkg.models:Net`` is your own ``nn.Module`` class, imported (its code runs: callers refuse such a name read
from a run's files, :mod:`visiontrain.config.trust`) and built with the model args as keyword arguments, plus
``num_classes``/``in_channels`` when its ``__init__`` takes them (docs/cookbook.md §4).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace

from torch import nn

from visiontrain.config.trust import check_builder_args, import_spec, names_code
from visiontrain.errors import ModelError
from visiontrain.models import timm_models, torchvision_models
from visiontrain.models.entry import MODELS, ModelEntry, ModelInput, register_model
from visiontrain.models.surgery import adapt_input_channels

__all__ = ["MODELS", "ModelEntry", "ModelInput", "count_parameters", "create_model", "get_entry", "register_model"]


_USER_ENTRIES: dict[str, ModelEntry] = {}  # one import per spec and process: its module runs once


def get_entry(name: str) -> ModelEntry:
    """The registry entry for a name, including torchvision classifiers, ``timm/<name>`` and ``module:Class``."""
    if name in MODELS:
        return MODELS.get(name)
    if names_code(name):
        if name not in _USER_ENTRIES:
            _USER_ENTRIES[name] = _user_entry(name)
        return _USER_ENTRIES[name]
    entry = timm_models.entry(name) if name.startswith("timm/") else torchvision_models.entry(name)
    if entry is None:
        raise ModelError(MODELS.unknown_message(name) + " (or any torchvision.models classifier, "
                         "see `visiontrain models --all`; your own nn.Module class: --model my_model.py:MyNet)")
    return entry


def create_model(name: str, inp: ModelInput, args: dict | None = None) -> nn.Module:
    """Build ``name`` for ``inp`` with builder arguments ``args`` (checked against the builder).

    >>> create_model("resnet18", ModelInput(1, 32, 10)).conv1.in_channels  # RGB stem adapted to gray
    1
    """
    entry = get_entry(name)
    args = dict(args or {})
    check_builder_args(name, entry.source, args)  # no loading files, URLs or classes by name, from anywhere
    _check_args(name, entry.builder, args)
    adapt = entry.channels is not None and inp.channels != entry.channels
    if adapt and not entry.adapt_channels:
        raise ModelError(f"model {name!r} takes {entry.channels}-channel input, the data has {inp.channels}")
    if inp.size < entry.min_size:
        raise ModelError(f"model {name!r} needs inputs of at least {entry.min_size} px, got {inp.size}; "
                         "set --image-size")
    try:
        model = entry.builder(replace(inp, channels=entry.channels) if adapt else inp, **args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"model {name!r} cannot be built with args {args} for {inp.channels}x{inp.size}x"
                         f"{inp.size} input: {exc}") from exc
    if adapt:
        adapt_input_channels(model, inp.channels)
    return model


def _user_entry(spec: str) -> ModelEntry:
    """Your own ``nn.Module`` class (or a function returning one) as a builder."""
    made = import_spec(spec, "--model", ModelError)
    if not callable(made):
        raise ModelError(f"--model {spec}: {type(made).__name__} is not a class or function")
    try:
        params = inspect.signature(made).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    shape = {"num_classes": lambda inp: inp.num_classes, "in_channels": lambda inp: inp.channels}

    def build(inp: ModelInput, **args: object) -> nn.Module:
        given = {key: value(inp) for key, value in shape.items() if key in params and key not in args}
        model = made(**given, **args)
        if not isinstance(model, nn.Module):
            raise ModelError(f"--model {spec}: it made a {type(model).__name__}, not an nn.Module")
        return model

    return ModelEntry(build, f"your own {spec}", source="user")


def _check_args(name: str, builder: Callable, args: dict) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p != "inp"]
    for key in args:
        if key not in allowed:
            raise ModelError(f"model {name!r} has no argument {key!r}; it takes: {', '.join(allowed) or 'none'}")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
