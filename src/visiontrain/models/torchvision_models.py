"""Every ``torchvision.models`` image classifier by name, with ``num_classes`` set to the dataset's."""

from __future__ import annotations

import functools

import torchvision
from torch import nn

from visiontrain.models.factory import ModelEntry, ModelInput

# Classifiers that need more than the generic 32 px to get through their downsampling.
_MIN_SIZE = {"inception_v3": 75, "googlenet": 32}


@functools.cache
def classifier_names() -> tuple[str, ...]:
    """Names of torchvision's image classifiers (not detection/segmentation/video models)."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def entry(name: str) -> ModelEntry | None:
    if name not in classifier_names():
        return None

    def build(inp: ModelInput, **args: object) -> nn.Module:
        kwargs = dict(args)
        if name in ("inception_v3", "googlenet"):
            kwargs.setdefault("aux_logits", False)  # the aux heads need 299/224 px and ImageNet's 1000 classes
            kwargs.setdefault("init_weights", True)
        return torchvision.models.get_model(name, weights=None, num_classes=inp.num_classes, **kwargs)

    return ModelEntry(build, f"torchvision.models.{name}", source="torchvision", channels=3,
                      default_size=299 if name == "inception_v3" else 224, min_size=_MIN_SIZE.get(name, 32))
