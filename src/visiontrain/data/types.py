"""What a data source gives: its splits (in memory, as files, or as a user's Dataset items), its classes and
shape, and the registry of named datasets (``@register_dataset``).

A split is held in memory as one uint8 tensor (batched with tensor ops — the fast path), as a file list
(decoded per sample), or as items of a user's Dataset. Labels index ``classes``; for a regression source they
are float32 values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visiontrain.config import DataConfig
from visiontrain.data.images import ImageInfo
from visiontrain.errors import DataError
from visiontrain.registry import Registry


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


@dataclass
class StreamSplit:
    """Items read in order from a stream (a Hugging Face streaming dataset, data/hf.py): no random access, so no
    in-memory cache, no held-out split cut from it, and labels unknown until read (``labels`` is empty).

    ``reader.items(seed, epoch, shuffle)`` yields ``(payload, label)`` — encoded image bytes (or a file path) and
    the label — in an order that depends only on its arguments (and on the DataLoader worker reading it).
    """

    reader: Any
    length: int  # items in the split, from the dataset's metadata
    name: str  # how messages name an item: "hf:ylecun/mnist/train"
    labels: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    def __len__(self) -> int:
        return self.length

    def subset(self, index: torch.Tensor) -> StreamSplit:
        raise DataError(f"{self.name}: a streamed split cannot be split further; use the dataset's own validation "
                        "split, or --val-split 0")

    @property
    def paths(self) -> list[Path]:
        return []


Split = TensorSplit | FileSplit | ItemSplit | StreamSplit


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
    task: str = "classification"  # or "regression": float32 values; "multilabel": float32 multi-hot [N, K]
    preset: str = "photos"  # the training augmentation preset that suits these images (transforms.PRESETS)
    root: Path | None = None  # where relative paths in split.json start
    split_record: dict[str, Any] | None = None  # the generated or reused val split, saved as split.json
    bad_images: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) skipped by the scan
    skipped_links: list[tuple[str, str, str]] = field(default_factory=list)  # (symlink, target, why): data/links.py

    @property
    def target_dtype(self) -> torch.dtype:
        """int64 class indices for classification, float32 values (regression) or multi-hot rows (multilabel)."""
        return torch.int64 if self.task == "classification" else torch.float32


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
