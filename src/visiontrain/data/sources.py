"""Where images come from: registered datasets, folder-per-class trees, CSV/JSON-lines manifests and a user's
own ``Dataset`` class by import path.

A source returns its splits either in memory (one uint8 tensor, batched with tensor ops — the fast path),
as file lists (decoded per sample), or as items of a user's Dataset. Labels index ``classes``; for a
regression source they are float32 values and ``classes`` is empty.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visiontrain.config import DataConfig
from visiontrain.data.images import ImageInfo
from visiontrain.data.splits import complement, held_from_record, read_split_file, split_record, stratified_split
from visiontrain.errors import DataError
from visiontrain.registry import Registry
from visiontrain.trust import names_code


@dataclass
class TensorSplit:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N] (float32 for regression)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.images[index], self.labels[index])


@dataclass
class FileSplit:
    paths: list[Path]
    labels: torch.Tensor  # int64 [N] (float32 for regression)
    infos: list[ImageInfo] | None = None  # what the header scan saw, per file

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> FileSplit:
        infos = [self.infos[i] for i in index.tolist()] if self.infos is not None else None
        return FileSplit([self.paths[i] for i in index.tolist()], self.labels[index], infos)


@dataclass
class ItemSplit:
    """Items of a user's ``Dataset`` (``dataset[i]`` → image, label), decoded per sample like files."""

    dataset: Any
    indices: torch.Tensor  # int64 [N]: positions in ``dataset``
    labels: torch.Tensor
    name: str  # how messages name an item: "mypkg.data:MyData[12]"

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ItemSplit:
        return ItemSplit(self.dataset, self.indices[index], self.labels[index], self.name)

    @property
    def paths(self) -> list[Path]:
        """Names of the items, for messages and ``bad_images.txt`` (they are not files)."""
        return [Path(f"{self.name}[{i}]") for i in self.indices.tolist()]


Split = TensorSplit | FileSplit | ItemSplit


@dataclass
class DataSource:
    name: str
    classes: list[str]  # class names, labels index them; empty for regression
    channels: int  # channels the images have (1 or 3)
    size: int | None  # natural square side, None when the images differ
    splits: dict[str, Split]  # "train" always; "val" and "test" when the source has them
    mean: tuple[float, ...] | None  # per-channel normalization statistics in [0, 1] units; None = compute
    std: tuple[float, ...] | None
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. a generated split)
    task: str = "classification"  # or "regression": labels are float32 values
    preset: str = "photos"  # the training augmentation preset that suits these images (transforms.PRESETS)
    root: Path | None = None  # where relative paths in split.json start
    split_record: dict[str, Any] | None = None  # the generated or reused val split, saved as split.json
    bad_images: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) skipped by the scan
    skipped_links: list[tuple[str, str, str]] = field(default_factory=list)  # (symlink, target, why): data/links.py

    @property
    def target_dtype(self) -> torch.dtype:
        """int64 class indices for classification, float32 values for regression."""
        return torch.float32 if self.task == "regression" else torch.int64


SourceBuilder = Callable[[DataConfig, int], DataSource]
DATASETS: Registry[SourceBuilder] = Registry("dataset", DataError)
DESCRIPTIONS: dict[str, str] = {}


def register_dataset(name: str, description: str) -> Callable[[SourceBuilder], SourceBuilder]:
    def wrap(fn: SourceBuilder) -> SourceBuilder:
        DESCRIPTIONS[name] = description
        return DATASETS.register(name, fn)

    return wrap


def registered_name(name: str) -> str | None:
    """The registered dataset ``name`` means, forgiving case, '-' and '_' ("FashionMNIST" → fashion_mnist)."""
    if name in DATASETS:
        return name
    squash = re.sub(r"[-_ ]", "", name.lower())
    return next((n for n in DATASETS if re.sub(r"[-_ ]", "", n) == squash), None)


def load_source(cfg: DataConfig, seed: int) -> DataSource:
    """The dataset named by ``cfg.name``, with a val split.

    ``cfg.name`` is a registered name, a folder, a ``.csv``/``.jsonl`` manifest, or ``module:Class``.
    A source without its own val split gets one from ``cfg.split_file`` or, else, a seeded, stratified
    ``cfg.val_split`` of train held out.

    >>> load_source(DataConfig(name="synthetic"), seed=0).classes  # doctest: +SKIP
    ['circle', 'square', 'triangle', 'cross']
    """
    source = _find_source(cfg, seed)
    train = source.splits["train"]
    if "val" in source.splits or len(train) < 2 or (cfg.val_split == 0 and not cfg.split_file):
        return source
    paths = train.paths if isinstance(train, FileSplit) else None
    if cfg.split_file:
        record = read_split_file(cfg.split_file)
        held = held_from_record(record, len(train), paths, source.root, f"split file {cfg.split_file}")
        how = f"from {cfg.split_file}"
    else:
        held = stratified_split(train.labels, cfg.val_split, seed)[1]
        record = split_record(source.name, seed, cfg.val_split, len(train), held, paths, source.root)
        how = f"(val_split {cfg.val_split}, seed {seed}, stratified)"
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
    path = Path(cfg.name).expanduser()
    if names_code(cfg.name):  # the user's own Dataset: callers refuse one a run's files name (visiontrain.trust)
        from visiontrain.data.custom import custom_source

        return custom_source(cfg.name, cfg, seed)
    if path.is_dir():
        from visiontrain.data.folders import folder_source

        return folder_source(path, cfg, seed)
    if path.suffix.lower() in (".csv", ".jsonl", ".json", ".txt", ".tsv"):
        from visiontrain.data.manifest import manifest_source

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


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of a uint8 [N,C,H,W] tensor over every image, in [0, 1] units (chunked sums)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to("cpu", torch.float64)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().div(255).clamp_min(1e-3)
    return tuple(round(v, 4) for v in (mean / 255).tolist()), tuple(round(v, 4) for v in std.tolist())


@register_dataset("mnist", "MNIST handwritten digits, 28x28 gray, 60k train / 10k test (offline-capable)")
def _mnist(cfg: DataConfig, seed: int) -> DataSource:
    from visiontrain.data.mnist import load_mnist, prepare_mnist

    root = prepare_mnist(Path(cfg.dir), download=cfg.download, log=lambda line: print(line, flush=True))
    splits: dict[str, Split] = {}
    for split, train in (("train", True), ("test", False)):
        images, labels = load_mnist(root, train=train)
        splits[split] = TensorSplit(images.unsqueeze(1).contiguous(), labels)
    return DataSource("mnist", [str(i) for i in range(10)], 1, 28, splits, (0.1307,), (0.3081,), preset="digits")


_SYNTHETIC_PIXELS = 2**25


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
    from visiontrain.data.synthetic import SHAPES, make_shapes

    args = dict(cfg.args)
    unknown = set(args) - {"size", "channels", "train", "val", "test"}
    if unknown:
        raise DataError(f"dataset 'synthetic' has no argument {sorted(unknown)[0]!r}; "
                        "it takes size, channels, train, val, test")
    size, channels = _whole(args, "size", 32), _whole(args, "channels", 3)
    counts = {k: _whole(args, k, d) for k, d in (("train", 2000), ("val", 400), ("test", 400))}
    if channels not in (1, 3) or not 8 <= size <= 1024 or min(counts.values()) < 1:
        raise DataError("dataset 'synthetic' needs channels 1 or 3, size 8 to 1024 and at least 1 image per split")
    if max(counts.values()) * size * size > _SYNTHETIC_PIXELS:  # made in one go: ~60 bytes a pixel while making
        raise DataError(f"dataset 'synthetic': at most {_SYNTHETIC_PIXELS:,} pixels per split (images x size x "
                        f"size; {_SYNTHETIC_PIXELS // (size * size):,} images of size {size}); use fewer or smaller")
    # Splits come from disjoint seeds so that no image is shared between them.
    splits: dict[str, Split] = {
        name: TensorSplit(*make_shapes(n, size, channels, seed=1000 * i + 17))
        for i, (name, n) in enumerate(counts.items())
    }
    mean, std = channel_stats(splits["train"].images)  # type: ignore[union-attr]
    return DataSource("synthetic", list(SHAPES), channels, size, splits, mean, std, preset="none")
