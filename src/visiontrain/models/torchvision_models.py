"""Every ``torchvision.models`` image classifier by name, with ``num_classes`` set to the dataset's.

Vision transformers are built for the input side they will see (``image_size``/``input_size``), so
``vit_b_16`` trains at 32 px as well as at 224. A 1-channel input gets the RGB stem adapted (see
:func:`visiontrain.models.surgery.adapt_input_channels`) rather than an error.
"""

from __future__ import annotations

import functools
import re

from torch import nn

from visiontrain.models.entry import ModelEntry, ModelInput

# Classifiers that need more than the generic 32 px to get through their downsampling.
_MIN_SIZE = {"inception_v3": 75, "googlenet": 32, "alexnet": 63, "maxvit_t": 224}
_DEFAULT_SIZE = {"inception_v3": 299}
# Builder arguments that must follow the input side: name pattern → (argument, value from the side).
_SIZE_ARGS: list[tuple[str, str, object]] = [
    (r"vit_", "image_size", lambda s: s),
    (r"maxvit_", "input_size", lambda s: (s, s)),
]
# The aux heads of these need 299/224 px and ImageNet's 1000 classes: off unless asked for.
_NO_AUX = {"inception_v3", "googlenet"}


@functools.cache
def classifier_names() -> tuple[str, ...]:
    """Names of torchvision's image classifiers (not detection/segmentation/video models)."""
    import torchvision  # heavy (it loads torch._dynamo): only when a model is not one of visiontrain's own

    return tuple(torchvision.models.list_models(module=torchvision.models))


def family(name: str) -> str:
    """``resnet18`` → ``resnet``, ``mobilenet_v3_small`` → ``mobilenet_v3``, ``swin_v2_t`` → ``swin_v2``."""
    match = re.match(r"^(mobilenet_v\d|efficientnet_v2|swin_v2|wide_resnet|[a-z]+)", name)
    return match.group(1) if match else name


def builder_kwargs(name: str, inp: ModelInput, args: dict) -> dict:
    """The keyword arguments torchvision's builder gets for ``inp`` (user ``args`` win)."""
    kwargs = dict(args)
    if name in _NO_AUX:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    for pattern, key, value in _SIZE_ARGS:
        if re.match(pattern, name):
            kwargs.setdefault(key, value(inp.size))  # type: ignore[operator]
    return kwargs


def entry(name: str) -> ModelEntry | None:
    if name not in classifier_names():
        return None

    def build(inp: ModelInput, **args: object) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=inp.num_classes,
                                            **builder_kwargs(name, inp, args))

    return ModelEntry(build, f"torchvision.models.{name}", source="torchvision", channels=3,
                      default_size=_DEFAULT_SIZE.get(name, 224), min_size=_MIN_SIZE.get(name, 32),
                      adapt_channels=True)
