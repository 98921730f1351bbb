"""Model surgery for fine-tuning: the classification head, the input stem, freezing, frozen BatchNorm.

* :func:`find_head` finds the classification layer whatever the model calls it (``fc``, ``classifier.6``,
  ``head``, ``heads.head``, SqueezeNet's 1x1 ``classifier.1`` conv …) and :func:`replace_head` swaps it
  for one that fits a new class count, optionally with hidden layers (seed 001's 256→128→10, docs/cookbook.md §11:
  partial loading and freezing).
* :func:`adapt_input_channels` lets a 3-channel ImageNet stem read gray images by summing its RGB
  weights — exactly what the net computes on a gray image repeated to RGB, at a third of the cost.
* :func:`freeze` turns off gradients by a name predicate and keeps the frozen BatchNorm layers in eval
  mode for good, even though the training loop calls ``model.train()`` every epoch: their running
  statistics are part of what was frozen.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import types
from collections.abc import Callable, Iterable

import torch
from torch import nn

from visiontrain.errors import ConfigError, ModelError

_BATCHNORM = nn.modules.batchnorm._BatchNorm


def find_head(model: nn.Module, num_classes: int | None = None) -> str:
    """Dotted name of the classification layer: the last ``Linear`` with ``num_classes`` outputs (else the
    last 1x1 ``Conv2d`` with them, as in SqueezeNet; else the last ``Linear``).

    >>> import torch, torchvision
    >>> with torch.device("meta"):  # shapes only: no memory, no time
    ...     vgg = torchvision.models.vgg11(num_classes=10)
    >>> find_head(vgg, 10), find_head(torchvision.models.squeezenet1_1(num_classes=10), 10)
    ('classifier.6', 'classifier.1')
    """
    linears = [(n, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    convs = [(n, m.out_channels) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    for candidates in (linears, convs):
        fitting = [n for n, width in candidates if num_classes is None or width == num_classes]
        if fitting:
            return fitting[-1]
    if linears:
        return linears[-1][0]
    raise ModelError(f"cannot find the classification layer of {type(model).__name__} (no Linear or 1x1 conv "
                     f"with {num_classes} outputs); this model cannot get a new head")


def replace_head(model: nn.Module, num_classes: int, hidden: Iterable[int] | None = None,
                 path: str | None = None) -> str:
    """Swap the classification layer at ``path`` (default: :func:`find_head`) for a fresh one with
    ``num_classes`` outputs, through ``hidden`` widths with ReLU in between; returns the path.

    >>> import torchvision
    >>> m = torchvision.models.resnet18()
    >>> replace_head(m, 10, hidden=[128])
    'fc'
    >>> m.fc
    Sequential(
      (0): Linear(in_features=512, out_features=128, bias=True)
      (1): ReLU(inplace=True)
      (2): Linear(in_features=128, out_features=10, bias=True)
    )
    """
    path = path or find_head(model)
    old = model.get_submodule(path)
    if isinstance(old, nn.Linear):
        width = old.in_features

        def make(a: int, b: int, bias: bool) -> nn.Module:
            return nn.Linear(a, b, bias=bias)
    elif isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1):
        width = old.in_channels

        def make(a: int, b: int, bias: bool) -> nn.Module:
            return nn.Conv2d(a, b, 1, bias=bias)
    else:
        raise ModelError(f"the head {path!r} is a {type(old).__name__}; only a Linear or 1x1 Conv2d head can be "
                         "replaced")
    sizes = [width, *(hidden or []), num_classes]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        last = i == len(sizes) - 2
        # the final layer keeps the old head's bias choice, so a rebuilt model has the same tensors
        layers.append(make(a, b, old.bias is not None or not last))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    new = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
    model.set_submodule(path, new.to(device=old.weight.device, dtype=old.weight.dtype))
    return path


def find_stem(model: nn.Module) -> str:
    """Dotted name of the first ``Conv2d``: the layer that reads the image."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise ModelError(f"{type(model).__name__} has no Conv2d stem, so its input channels cannot be adapted; "
                     "feed it the channels it was built for (--in-channels)")


def adapt_input_channels(model: nn.Module, channels: int) -> str:
    """Make the stem conv read ``channels`` channels; returns its name.

    For gray input the new kernel is the sum of the RGB kernels, so the output equals the original net's on
    the gray image repeated three times. Other counts repeat the kernels and rescale to keep the
    activation scale.
    """
    name = find_stem(model)
    old: nn.Conv2d = model.get_submodule(name)  # type: ignore[assignment]
    if old.in_channels == channels:
        return name
    if old.groups != 1:
        raise ModelError(f"the stem {name!r} is a grouped conv; its input channels cannot be adapted")
    weight = old.weight.detach()
    if channels == 1:
        new_weight = weight.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(channels / old.in_channels)
        new_weight = weight.repeat(1, reps, 1, 1)[:, :channels] * (old.in_channels / channels)
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding,  # type: ignore[arg-type]
                    old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(new_weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    model.set_submodule(name, new)
    return name


def pattern_predicate(patterns: Iterable[str]) -> Callable[[str], bool]:
    """``name → bool`` for globs on parameter names; ``features`` also means ``features.*``."""
    pats = list(patterns)
    return lambda name: any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in pats)


def check_patterns(model: nn.Module, patterns: Iterable[str], flag: str = "--freeze") -> None:
    """A pattern that matches no parameter is a typo: say so, with names that do exist."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(pattern_predicate([pattern])(n) for n in names):
            sample = ", ".join(sorted({n.rsplit(".", 2)[0] for n in names})[:6])
            raise ConfigError(f"{flag} {pattern!r} matches no parameter of the model; names look like: {sample} "
                              "(see `visiontrain models show NAME`)")


def under(prefix: str) -> Callable[[str], bool]:
    """``name → bool``: the parameter belongs to the module ``prefix``."""
    return lambda name: name == prefix or name.startswith(prefix + ".")


def freeze(model: nn.Module, frozen: Callable[[str], bool]) -> list[str]:
    """Turn off gradients of every parameter ``frozen(name)`` accepts, lock the BatchNorm layers that are
    now fully frozen in eval mode, and return the frozen parameter names."""
    names = []
    for name, param in model.named_parameters():
        if frozen(name):
            param.requires_grad_(False)
            names.append(name)
    for module_name, module in model.named_modules():
        if isinstance(module, _BATCHNORM):
            own = list(module.parameters(recurse=False))
            # a BN without affine parameters follows the freeze rule of where it sits
            if (own and not any(p.requires_grad for p in own)) or (not own and frozen(f"{module_name}.weight")):
                _lock_eval(module)
    return names


def unfreeze(model: nn.Module, names: Iterable[str]) -> list[nn.Parameter]:
    """Turn gradients back on for ``names``; BatchNorm layers with trainable parameters train again."""
    wanted, params = set(names), []
    for name, param in model.named_parameters():
        if name in wanted and not param.requires_grad:
            param.requires_grad_(True)
            params.append(param)
    for module in model.modules():
        if isinstance(module, _BATCHNORM) and any(p.requires_grad for p in module.parameters(recurse=False)):
            module.__dict__.pop("train", None)  # back to nn.Module.train
            module.train(model.training)
    return params


def is_locked(module: nn.Module) -> bool:
    return "train" in module.__dict__


def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def _lock_eval(module: nn.Module) -> None:
    # An instance attribute shadows nn.Module.train, and model.train() reaches it through children():
    # the loop's model.train() can no longer switch this layer back to updating its running statistics.
    module.train = types.MethodType(_eval_only_train, module)  # type: ignore[method-assign]
    module.eval()
