"""Recipes: named presets of model + schedule + batch size + precision + epochs, picked with ``--recipe NAME``.

A recipe fills config keys *underneath* everything the user says: defaults ← recipe ← YAML file ← flags ←
``--set``. So ``--recipe fast --epochs 3`` is the fast recipe for three epochs, and a recipe never hides an
explicit choice. The resolved values are saved in the run's ``config.yaml`` with the recipe's name, so a
resumed run keeps them even if the recipe changes later. ``visiontrain recipes`` lists them.

Each recipe says what it was tuned for and what it measured there (docs/training.md#recipes, docs/benchmarks.md);
hyperparameters were tuned on the validation split, never on the test split.

>>> resolve("fast")["model.name"]
'fast_cnn'
>>> resolve("nope")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
visiontrain.errors.ConfigError: unknown recipe 'nope'; choose one of: ...
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from visiontrain.errors import ConfigError
from visiontrain.registry import Registry


@dataclass(frozen=True)
class Recipe:
    description: str
    settings: dict[str, Any]  # dotted config keys → values, applied under the user's own
    measured: str = ""  # what it reached where it was tuned (the numbers live in docs/benchmarks.md)


RECIPES: Registry[Recipe] = Registry("recipe", ConfigError)

# Shared by the fast recipes. Units: batch in images, lr is Adam's peak of the one-cycle, epochs are passes over
# the training split (54,000 MNIST images with the default 10% validation hold-out).
_FAST: dict[str, Any] = {
    "model.name": "fast_cnn",
    "model.args": {"widths": [16, 32]},
    "data.batch_size": 128,
    # Cache-sized: 500 digits through fast_cnn evaluate 2x faster per image than 2000 on one CPU thread (the first
    # conv's output, 18 MB, stays in a 32 MB L3; 0.55 vs 1.17 CPU-s for MNIST's 10k test images).
    "data.eval_batch_size": 500,
    "data.transforms.train": "none",
    "optim.name": "adam",
    "optim.lr": 0.015,
    "optim.weight_decay": 0.0,
    "optim.schedule": "onecycle",
    "optim.warmup_epochs": 0.0,
    "train.epochs": 1,
    "train.precision": "auto",
    "train.channels_last": True,
    "train.label_smoothing": 0.1,
}

RECIPES.register("fast", Recipe(
    "time to 99% on MNIST-sized digits: fast_cnn 16-32, Adam one-cycle, batch 128, label smoothing, "
    "bf16 where native, 1 epoch",
    _FAST, measured="MNIST test accuracy; see docs/benchmarks.md"))
RECIPES.register("fast_long", Recipe(
    "the fast recipe for 99.5% on MNIST: fast_cnn 32-64, random crops of 2 px, 8 epochs",
    {**_FAST, "model.args": {"widths": [32, 64]}, "train.epochs": 8, "data.transforms.train": "digits"},
    measured="MNIST test accuracy; see docs/benchmarks.md"))
RECIPES.register("seeds", Recipe(
    "the study notes' routine (seed 002, docs/cookbook.md §14): seed_net, plain SGD lr 0.01, batch 64, constant "
    "rate, no augmentation",
    {"model.name": "seed_net", "data.batch_size": 64, "data.transforms.train": "none", "optim.name": "sgd",
     "optim.lr": 0.01, "optim.momentum": 0.0, "optim.nesterov": False, "optim.weight_decay": 0.0,
     "optim.schedule": "none", "optim.warmup_epochs": 0.0, "train.precision": "32", "train.label_smoothing": 0.0},
    measured="the baseline of benchmarks/bench_engine.py"))

# CIFAR-10 on a GPU, airbench's way (models/airbench.py; docs/benchmarks.md#gpu): its network, batch 1024, SGD
# with Nesterov momentum, label smoothing 0.2, flips and 2-px translations, bf16 + channels_last. Not tuned here
# (no GPU was lent to the session that wrote it): airbench's choices, with a plain one-cycle instead of its
# hand-made schedule and lookahead, and its learned-not-whitened stem. benchmarks/gpu.py times it against an
# airbench-style loop with the same network.
RECIPES.register("cifar_gpu", Recipe(
    "CIFAR-10 on a GPU, airbench-style: airbench_net, SGD Nesterov one-cycle, batch 1024, label smoothing 0.2, "
    "flips + 2-px translations, bf16 where native, channels_last, 10 epochs",
    {"model.name": "airbench_net", "data.batch_size": 1024, "data.eval_batch_size": 2000,
     "data.transforms.train": [{"name": "RandomCrop", "size": 32, "padding": 2}, {"name": "RandomHorizontalFlip"}],
     "optim.name": "sgd", "optim.lr": 0.4, "optim.momentum": 0.9, "optim.nesterov": True,
     "optim.weight_decay": 5e-4, "optim.schedule": "onecycle", "optim.warmup_epochs": 0.0, "train.epochs": 10,
     "train.precision": "auto", "train.channels_last": True, "train.label_smoothing": 0.2},
    measured="0.77-0.89x an airbench-style loop's img/s on an H200 (benchmarks/gpu.py); accuracy "
             "not tuned on real CIFAR-10"))

# Fine-tuning pretrained ImageNet weights on a folder of one's own photos (docs/training.md#fine-tuning, the
# measurements in docs/benchmarks.md#fine-tuning). The input side and eval pipeline come from the weights.
FINETUNE: dict[str, Any] = {
    "model.name": "resnet18",
    "model.pretrained": "DEFAULT",  # dropped when --init-from brings the weights instead
    "model.freeze_backbone": True,  # epoch 1 trains the new head only: its random gradients never reach the backbone
    "model.unfreeze_at": 2,  # then everything, the backbone at a tenth of the head's rate
    "model.backbone_lr_scale": 0.1,
    "data.transforms.train": "photos",  # random resized crops (35-100% of the photo) and flips
    "data.batch_size": 32,
    "optim.name": "adamw",
    "optim.lr": 0.001,
    "optim.weight_decay": 0.05,
    "optim.schedule": "cosine",
    "optim.warmup_epochs": 0.0,
    "train.epochs": 8,
    "train.label_smoothing": 0.1,
    "train.ema_decay": None,
    "train.precision": "auto",
}
RECIPES.register("finetune", Recipe(
    "fine-tune pretrained weights on your photos: the model's default ImageNet weights (resnet18 unless --model), "
    "their input size, photo augmentation, the head alone for 1 epoch then everything with the backbone at 0.1x, "
    "AdamW + cosine, label smoothing 0.1, 8 epochs",
    FINETUNE, measured="fine-tune vs from scratch on real photos; see docs/benchmarks.md"))


def resolve(name: str) -> dict[str, Any]:
    """The dotted settings of recipe ``name`` (a copy); an unknown name is a :class:`ConfigError`."""
    if name not in RECIPES:
        raise ConfigError(f"{RECIPES.unknown_message(name)} (see `visiontrain recipes`)")
    return copy.deepcopy(RECIPES.get(name).settings)
