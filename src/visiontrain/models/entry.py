"""What a model builder is registered with: the input it must fit (:class:`ModelInput`) and its registry entry
(:class:`ModelEntry`); ``@register_model`` adds a builder to :data:`MODELS`."""

from __future__ import annotations

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
    channels: int | None = None  # the input channels the net is designed for, None = any
    default_size: int | None = None  # preferred input side, None = the dataset's own
    min_size: int = 8
    # A fixed-channel net built for other channels gets its stem conv adapted (gray: RGB weights summed)
    # instead of an error. The data pipeline still feeds `channels` unless the config asks otherwise.
    adapt_channels: bool = False


MODELS: Registry[ModelEntry] = Registry("model", ModelError)


def register_model(name: str, description: str, **kwargs: object) -> Callable:
    """Decorator for a builder ``fn(inp: ModelInput, **args) -> nn.Module``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name, ModelEntry(fn, description, **kwargs))  # type: ignore[arg-type]
        return fn

    return wrap
