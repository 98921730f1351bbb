"""Build a model by name for a dataset's shape: ``create_model("lenet5", ModelInput(1, 28, 10))``.

Every builder takes the input it must fit (channels, side, class count) plus its own keyword arguments, so
one name works on MNIST and on CIFAR alike. Names not registered here fall through to
``torchvision.models`` classifiers (``resnet18``, ``vgg16`` …) with ``num_classes`` set.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from visiontrain.errors import ModelError
from visiontrain.registry import Registry


@dataclass(frozen=True)
class ModelInput:
    """What a model must accept and produce."""

    channels: int
    size: int  # square side in pixels
    num_classes: int


@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., nn.Module]  # builder(inp: ModelInput, **args) -> nn.Module
    description: str
    source: str = "visiontrain"
    channels: int | None = None  # fixed input channels, None = any
    default_size: int | None = None  # preferred input side, None = the dataset's own
    min_size: int = 8


MODELS: Registry[ModelEntry] = Registry("model", ModelError)


def register_model(name: str, description: str, **kwargs: object) -> Callable:
    """Decorator for a builder ``fn(inp: ModelInput, **args) -> nn.Module``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name, ModelEntry(fn, description, **kwargs))  # type: ignore[arg-type]
        return fn

    return wrap


def get_entry(name: str) -> ModelEntry:
    """The registry entry for a name, including torchvision classifiers."""
    from visiontrain.models import torchvision_models  # registers lazily; keeps `import visiontrain` fast

    if name in MODELS:
        return MODELS.get(name)
    entry = torchvision_models.entry(name)
    if entry is None:
        raise ModelError(MODELS.unknown_message(name) + " (or any torchvision.models classifier, "
                         "see `visiontrain models --all`)")
    return entry


def create_model(name: str, inp: ModelInput, args: dict | None = None) -> nn.Module:
    """Build ``name`` for ``inp`` with builder arguments ``args`` (checked against the builder)."""
    entry = get_entry(name)
    args = dict(args or {})
    _check_args(name, entry.builder, args)
    if entry.channels is not None and inp.channels != entry.channels:
        raise ModelError(f"model {name!r} takes {entry.channels}-channel input, the data has {inp.channels}")
    if inp.size < entry.min_size:
        raise ModelError(f"model {name!r} needs inputs of at least {entry.min_size} px, got {inp.size}; "
                         "set --image-size")
    try:
        return entry.builder(inp, **args)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {name!r} cannot be built with args {args}: {exc}") from exc


def _check_args(name: str, builder: Callable, args: dict) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p != "inp"]
    for key in args:
        if key not in allowed:
            raise ModelError(f"model {name!r} has no argument {key!r}; it takes: {', '.join(allowed) or 'none'}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
