"""Where images come from: registered datasets, folder-per-class trees, CSV/JSON-lines manifests and a user's
own ``Dataset`` class by import path.

A source returns its splits either in memory (one uint8 tensor, batched with tensor ops — the fast path),
as file lists (decoded per sample), or as items of a user's Dataset. Labels index ``classes``; for a
regression source they are float32 values and ``classes`` is empty.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visiontrain.config import DataConfig
from visiontrain.config.trust import names_code
from visiontrain.data.custom import custom_source
from visiontrain.data.folders import folder_source
from visiontrain.data.hf import hf_source, is_hf
from visiontrain.data.manifest import manifest_source
from visiontrain.data.mnist import load_mnist, prepare_mnist
from visiontrain.data.shards import is_shards, shards_source
from visiontrain.data.splits import complement, held_from_record, read_split_file, split_record, stratified_split
from visiontrain.data.synthetic import MULTI_SHAPES, SHAPES, make_multi_shapes, make_shapes
from visiontrain.data.types import (
    DATASETS,
    DESCRIPTIONS,
    DataSource,
    FileSplit,
    ItemSplit,
    Split,
    TensorSplit,
    channel_stats,
    register_dataset,
    registered_name,
)
from visiontrain.errors import DataError
from visiontrain.fileio import user_path

if TYPE_CHECKING:
    import torch

__all__ = ["DATASETS", "DESCRIPTIONS", "DataSource", "FileSplit", "ItemSplit", "Split", "TensorSplit",
           "channel_stats", "load_source", "register_dataset", "registered_name"]


def load_source(cfg: DataConfig, seed: int, *, need_val: bool = True) -> DataSource:
    """The dataset named by ``cfg.name``, with a val split.

    ``cfg.name`` is a registered name, a folder, a ``.csv``/``.jsonl`` manifest, ``hf:NAME_OR_PATH`` (a Hugging
    Face dataset) or ``module:Class``.
    A source without its own val split gets one from ``cfg.split_file`` or, else, a seeded, stratified
    ``cfg.val_split`` of train held out. Data too small to hold one out is an error when ``need_val``, else
    (evaluating another split) it keeps all of train and no val.

    >>> source = load_source(DataConfig(name="synthetic", args={"train": 40, "val": 8, "test": 8}), seed=0)
    >>> source.classes, len(source.splits["train"]), len(source.splits["val"])
    (['circle', 'square', 'triangle', 'cross'], 40, 8)
    """
    source = _find_source(cfg, seed)
    train = source.splits["train"]
    if "val" in source.splits or len(train) == 0 or (cfg.val_split == 0 and not cfg.split_file):
        return source
    paths = train.paths if isinstance(train, FileSplit) else None
    if cfg.split_file:
        record = read_split_file(cfg.split_file)
        held = held_from_record(record, len(train), paths, source.root, f"split file {cfg.split_file}")
        how = f"from {cfg.split_file}"
    else:
        held = stratified_split(train.labels, cfg.val_split, seed)[1]
        if len(held) == 0 and not need_val:
            return source
        if len(held) == 0:
            raise DataError(f"data {cfg.name}: {len(train):,} training images, at most one per class, are too few to "
                            f"hold out a validation split (val_split {cfg.val_split}); add images or a val/ folder, "
                            "or pass --val-split 0 (no validation: the last epoch is kept)")
        record = split_record(source.name, seed, cfg.val_split, len(train), held, paths, source.root)
        how = f"(val_split {cfg.val_split}, seed {seed}, stratified, at least one per class)"
    keep = complement(len(train), held)
    source.splits = {"train": train.subset(keep), "val": train.subset(held),
                     **{k: v for k, v in source.splits.items() if k != "train"}}
    source.split_record = record
    source.notes.append(f"held out {len(held):,} of {len(train):,} training images for validation {how}")
    return source


def _find_source(cfg: DataConfig, seed: int) -> DataSource:
    name = registered_name(cfg.name)
    if name is not None:
        return DATASETS.get(name)(cfg, seed)
    if is_hf(cfg.name):  # hf:NAME_OR_PATH[:config], read through the datasets library (data/hf.py)
        return hf_source(cfg, seed)
    path = user_path(cfg.name)
    if names_code(cfg.name):  # the user's own Dataset: callers refuse one a run's files name (visiontrain.config.trust)
        return custom_source(cfg.name, cfg, seed)
    if is_shards(cfg.name):  # shards:OUT/ or a folder holding index.json: `visiontrain data pack`'s output
        return shards_source(cfg, seed)
    if path.is_dir():
        return folder_source(path, cfg, seed)
    if path.suffix.lower() in (".csv", ".jsonl", ".json", ".txt", ".tsv"):
        return manifest_source(path, cfg, seed)
    if path.exists():
        raise DataError(f"data path {path} is a file but not a manifest; pass a folder with one sub-folder per "
                        "class, or a .csv/.jsonl manifest of path,label")
    looks_like_path = os.sep in cfg.name or cfg.name.startswith(".")
    if looks_like_path:
        raise DataError(f"data folder {path} does not exist; pass a registered dataset name (`visiontrain data "
                        "list`), a folder with one sub-folder per class, or a .csv/.jsonl manifest")
    raise DataError(DATASETS.unknown_message(cfg.name) + "; or a folder with one sub-folder per class, a "
                    ".csv/.jsonl manifest, or module:Class for your own Dataset")


@register_dataset("mnist", "MNIST handwritten digits, 28x28 gray, 60k train / 10k test (offline-capable)")
def _mnist(cfg: DataConfig, seed: int) -> DataSource:
    root = prepare_mnist(Path(cfg.dir), download=cfg.download)  # its progress lines go to stderr
    splits: dict[str, Split] = {}
    for split, train in (("train", True), ("test", False)):
        images, labels = load_mnist(root, train=train)
        splits[split] = TensorSplit(images.unsqueeze(1).contiguous(), labels)
    return DataSource("mnist", [str(i) for i in range(10)], 1, 28, splits, (0.1307,), (0.3081,), preset="digits")


_SYNTHETIC_CHUNK = 2**25  # pixels made in one go: ~60 bytes a pixel while making, 2 GB at most
_SYNTHETIC_PIXELS = 2**30  # per split: what is kept is uint8, 1 GiB a channel


def _make_split(make: Any, n: int, size: int, channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``make``'s ``n`` images in chunks of at most :data:`_SYNTHETIC_CHUNK` pixels, written into one tensor.

    A split that fits in one chunk is ``make(n, ...)`` itself (the data of every earlier release); a larger one
    (ResNet-50's 6,144 images of 224 px in benchmarks/gpu.py) is chunk after chunk, the first from ``seed``, each
    next from its own, each with balanced labels."""
    per = max(1, _SYNTHETIC_CHUNK // (size * size))
    if n <= per:
        return make(n, size, channels, seed=seed)
    images = labels = None
    for k, start in enumerate(range(0, n, per)):
        part_images, part_labels = make(min(per, n - start), size, channels, seed=seed + 100_000 * k)
        if images is None or labels is None:
            images = part_images.new_empty((n, *part_images.shape[1:]))
            labels = part_labels.new_empty((n, *part_labels.shape[1:]))
        images[start:start + len(part_images)] = part_images
        labels[start:start + len(part_labels)] = part_labels
    assert images is not None and labels is not None
    return images, labels


def _whole(args: dict[str, Any], key: str, default: int) -> int:
    value = args.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value.strip() if isinstance(value, str) else ""
    if text.isascii() and text.removeprefix("-").isdigit():
        return int(text)
    raise DataError(f"dataset 'synthetic': {key} must be a whole number, got {value!r}")


@register_dataset("synthetic", "learnable shapes (circle, square, triangle, cross), made on the fly; for "
                  "tests and demos. args: size, channels, train, val, test")
def _synthetic(cfg: DataConfig, seed: int) -> DataSource:
    return _shapes_source(cfg, "synthetic", make_shapes, list(SHAPES))


@register_dataset("synthetic_multilabel", "multi-label: 2-4 of six shapes (circle, square, triangle, cross, ring, "
                  "bar) per image, made on the fly; for tests and demos. args: size, channels, train, val, test")
def _synthetic_multilabel(cfg: DataConfig, seed: int) -> DataSource:
    return _shapes_source(cfg, "synthetic_multilabel", make_multi_shapes, list(MULTI_SHAPES), task="multilabel")


def _shapes_source(cfg: DataConfig, name: str, make: Any, classes: list[str],
                   task: str = "classification") -> DataSource:
    args = dict(cfg.args)
    unknown = set(args) - {"size", "channels", "train", "val", "test"}
    if unknown:
        raise DataError(f"dataset {name!r} has no argument {sorted(unknown)[0]!r}; "
                        "it takes size, channels, train, val, test")
    size, channels = _whole(args, "size", 32), _whole(args, "channels", 3)
    counts = {k: _whole(args, k, d) for k, d in (("train", 2000), ("val", 400), ("test", 400))}
    if channels not in (1, 3) or not 8 <= size <= 1024 or min(counts.values()) < 1:
        raise DataError(f"dataset {name!r} needs channels 1 or 3, size 8 to 1024 and at least 1 image per split")
    if max(counts.values()) * size * size > _SYNTHETIC_PIXELS:
        raise DataError(f"dataset {name!r}: at most {_SYNTHETIC_PIXELS:,} pixels per split (images x size x "
                        f"size; {_SYNTHETIC_PIXELS // (size * size):,} images of size {size}); use fewer or smaller")
    # Splits come from disjoint seeds so that no image is shared between them.
    splits: dict[str, Split] = {
        split: TensorSplit(*_make_split(make, n, size, channels, seed=1000 * i + 17))
        for i, (split, n) in enumerate(counts.items())
    }
    mean, std = channel_stats(splits["train"].images)  # type: ignore[union-attr]
    return DataSource(name, classes, channels, size, splits, mean, std, preset="none", task=task)
