"""A user's own ``torch.utils.data.Dataset`` by import path — the seeds' ``Mydata`` (docs/cookbook.md §12, your
own Dataset class).

``--data mypkg.data:MyData --data-arg root=data/train`` imports ``MyData`` (a module on the path, run from
the current folder, or a file: ``--data my_data.py:Mydata``) and builds it with the data args as keyword
arguments. Importing runs that module's code: it is your code, named by you — never by a run's files (callers
check a spec read from a file with :func:`visiontrain.config.trust.check_file_values` first). A class with a ``train``
parameter gives a train split (``train=True``) and a test split (``train=False``).

Items are ``(image, label)``: the image a PIL image, a [C,H,W] tensor (float in [0, 1] or uint8) or an
array; the label a class index, a class name (the seeds return the folder name: docs/cookbook.md §12) or a float
(regression).
A ``classes`` attribute names the classes; a ``targets`` attribute (one label per item) saves the pass
that otherwise reads every item once to learn the labels.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any

import torch
from PIL import Image

from visiontrain.config import DataConfig
from visiontrain.config.trust import import_spec
from visiontrain.data.types import DataSource, ItemSplit, Split
from visiontrain.errors import DataError
from visiontrain.limits import MAX_CLASSES


def custom_source(spec: str, cfg: DataConfig, seed: int) -> DataSource:
    cls = import_object(spec)
    kwargs = dict(cfg.args)
    try:
        takes_train = "train" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes_train = False
    made = {"train": _build(cls, spec, {**kwargs, "train": True} if takes_train else kwargs)}
    if takes_train:
        made["test"] = _build(cls, spec, {**kwargs, "train": False})
    raw = {name: _labels(ds, spec) for name, ds in made.items()}
    task = "regression" if any(isinstance(v, float) and not float(v).is_integer() for v in raw["train"][0]) else (
        "classification")
    classes = _classes(made["train"], [v for labels, _ in raw.values() for v in labels], task, spec)
    splits: dict[str, Split] = {}
    for name, ds in made.items():
        labels = _encode(raw[name][0], classes, task, spec)
        splits[name] = ItemSplit(ds, torch.arange(len(labels)), labels, f"{spec}:{name}" if takes_train else spec)
    shapes = Counter(shape for _, seen in raw.values() for shape in seen)
    channels = 1 if shapes and all(c == 1 for c, _, _ in shapes) else 3
    side = None
    if len(shapes) == 1:
        ((_, height, width),) = shapes
        side = height if height == width else None
    return DataSource(spec, classes if task == "classification" else ["value"], channels, side, splits, None, None,
                      task=task, preset="photos" if side is None or side > 64 else "cifar")


def import_object(spec: str) -> Any:
    """``"pkg.module:Name"`` or ``"path/file.py:Name"`` → the object, as a one-line DataError if impossible."""
    return import_spec(spec, "--data", DataError)


def _build(cls: Any, spec: str, kwargs: dict[str, Any]) -> Any:
    try:
        dataset = cls(**kwargs)
    except Exception as exc:  # the user's constructor: its message is what they need
        raise DataError(f"--data {spec}: {getattr(cls, '__name__', spec)}({_args(kwargs)}) failed: "
                        f"{type(exc).__name__}: {exc}; pass its arguments with --data-arg KEY=VALUE") from None
    try:
        length = len(dataset)
    except TypeError:
        raise DataError(f"--data {spec}: the dataset has no __len__; give it one") from None
    if length == 0:
        raise DataError(f"--data {spec}: {getattr(cls, '__name__', spec)}({_args(kwargs)}) is empty")
    return dataset


def _args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _labels(dataset: Any, spec: str) -> tuple[list[Any], list[tuple[int, int, int]]]:
    """Every item's label, from ``dataset.targets`` or one pass over the items (noting image shapes)."""
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        first = dataset[0]
        return [_plain(t) for t in targets], [_shape(first[0] if isinstance(first, tuple | list) else first)]
    labels, shapes = [], []
    for i in range(len(dataset)):
        try:
            item = dataset[i]
        except Exception as exc:  # the user's __getitem__: one line naming the item
            raise DataError(f"--data {spec}: item {i}: your Dataset raised {type(exc).__name__}: {exc}") from None
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise DataError(f"--data {spec}: item {i} must be (image, label), got {type(item).__name__}")
        labels.append(_plain(item[1]))
        shapes.append(_shape(item[0]))
    return labels, shapes


def _plain(label: Any) -> Any:
    if isinstance(label, torch.Tensor):
        return label.item()
    if hasattr(label, "item") and not isinstance(label, str):  # numpy scalars
        return label.item()
    return label


def _shape(image: Any) -> tuple[int, int, int]:
    """(channels, height, width) of an item's image, as it would be decoded (PIL gray modes → 1)."""
    if isinstance(image, Image.Image):
        return (1 if image.mode in ("1", "L", "I", "I;16", "F") else 3), image.height, image.width
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 2:
        return 1, int(shape[0]), int(shape[1])
    if len(shape) == 3 and isinstance(image, torch.Tensor):
        return int(shape[0]), int(shape[1]), int(shape[2])
    if len(shape) == 3:
        return int(shape[2]), int(shape[0]), int(shape[1])  # arrays are H×W×C
    return 3, 0, 0


def _classes(dataset: Any, labels: list[Any], task: str, spec: str) -> list[str]:
    if task == "regression":
        return []
    named = getattr(dataset, "classes", None)
    if isinstance(named, list | tuple) and named and all(isinstance(c, str) for c in named):
        return list(named)
    if all(isinstance(v, str) for v in labels):
        return sorted(set(labels))
    if all(isinstance(v, int | float) and float(v).is_integer() and v >= 0 for v in labels):
        if max(labels) >= MAX_CLASSES:
            raise DataError(f"--data {spec}: label {max(labels)} is over the limit of {MAX_CLASSES:,} classes; "
                            "integer labels are class indices 0..K-1")
        return [str(i) for i in range(int(max(labels)) + 1)]
    raise DataError(f"--data {spec}: labels must be class indices, class names or float values (regression); "
                    f"got {sorted({type(v).__name__ for v in labels})}")


def _encode(labels: list[Any], classes: list[str], task: str, spec: str) -> torch.Tensor:
    if task == "regression":
        return torch.tensor([float(v) for v in labels], dtype=torch.float32)
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for v in labels:
        i = index.get(v) if isinstance(v, str) else int(v)
        if i is None or not 0 <= i < len(classes):
            raise DataError(f"--data {spec}: label {v!r} is not one of the {len(classes)} classes {classes[:10]}")
        out.append(i)
    return torch.tensor(out, dtype=torch.int64)
