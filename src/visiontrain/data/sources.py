"""Where images come from: registered datasets (``mnist``, ``synthetic``) and folder-per-class trees.

A source returns its splits either in memory (one uint8 tensor, batched with tensor ops — the fast path)
or as file lists (decoded per sample by a DataLoader). Either way, labels index ``classes``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from visiontrain.config import DataConfig
from visiontrain.errors import DataError
from visiontrain.registry import Registry


@dataclass
class TensorSplit:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.images[index], self.labels[index])


@dataclass
class FileSplit:
    paths: list[Path]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> FileSplit:
        return FileSplit([self.paths[i] for i in index.tolist()], self.labels[index])


Split = TensorSplit | FileSplit


@dataclass
class DataSource:
    name: str
    classes: list[str]
    channels: int  # channels the images have (1 or 3)
    size: int | None  # natural square side, None when the files differ
    splits: dict[str, Split]  # "train" always; "val" and "test" when the source has them
    mean: tuple[float, ...]  # per-channel normalization statistics, in [0, 1] units
    std: tuple[float, ...]
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. a generated split)


SourceBuilder = Callable[[DataConfig, int], DataSource]
DATASETS: Registry[SourceBuilder] = Registry("dataset", DataError)
DESCRIPTIONS: dict[str, str] = {}


def register_dataset(name: str, description: str) -> Callable[[SourceBuilder], SourceBuilder]:
    def wrap(fn: SourceBuilder) -> SourceBuilder:
        DESCRIPTIONS[name] = description
        return DATASETS.register(name, fn)

    return wrap


def load_source(cfg: DataConfig, seed: int) -> DataSource:
    """The dataset named by ``cfg.name`` (a registered name, else a folder path), with a val split.

    A source without its own val split gets a seeded, stratified ``cfg.val_split`` of train held out.
    """
    source = _find_source(cfg, seed)
    train = source.splits["train"]
    if "val" not in source.splits and cfg.val_split > 0 and len(train) > 1:
        keep, held = stratified_split(train.labels, cfg.val_split, seed)
        source.splits = {"train": train.subset(keep), "val": train.subset(held),
                         **{k: v for k, v in source.splits.items() if k != "train"}}
        source.notes.append(f"held out {len(held):,} of {len(train):,} training images for validation "
                            f"(val_split {cfg.val_split}, seed {seed}, stratified)")
    return source


def _find_source(cfg: DataConfig, seed: int) -> DataSource:
    if cfg.name in DATASETS:
        return DATASETS.get(cfg.name)(cfg, seed)
    looks_like_path = os.sep in cfg.name or cfg.name.startswith(".") or Path(cfg.name).exists()
    if looks_like_path:
        from visiontrain.data.folders import folder_source

        return folder_source(Path(cfg.name), cfg, seed)
    raise DataError(DATASETS.unknown_message(cfg.name) + ", or a path to a folder with one sub-folder per class")


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out) with ``fraction`` of every class held out, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = min(len(idx) - 1, math.floor(len(idx) * fraction + 0.5)) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


def channel_stats(images: torch.Tensor, limit: int = 10_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of a uint8 [N,C,H,W] tensor (on at most ``limit`` images), in [0, 1] units."""
    x = images[:limit].double().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


@register_dataset("mnist", "MNIST handwritten digits, 28x28 gray, 60k train / 10k test (offline-capable)")
def _mnist(cfg: DataConfig, seed: int) -> DataSource:
    from visiontrain.data.mnist import load_mnist, prepare_mnist

    root = prepare_mnist(Path(cfg.dir), log=lambda line: print(line, flush=True))
    splits: dict[str, Split] = {}
    for split, train in (("train", True), ("test", False)):
        images, labels = load_mnist(root, train=train)
        splits[split] = TensorSplit(images.unsqueeze(1).contiguous(), labels)
    return DataSource("mnist", [str(i) for i in range(10)], 1, 28, splits, (0.1307,), (0.3081,))


@register_dataset("synthetic", "learnable shapes (circle, square, triangle, cross), made on the fly; for "
                  "tests and demos. args: size, channels, train, val, test")
def _synthetic(cfg: DataConfig, seed: int) -> DataSource:
    from visiontrain.data.synthetic import SHAPES, make_shapes

    args = dict(cfg.args)
    unknown = set(args) - {"size", "channels", "train", "val", "test"}
    if unknown:
        raise DataError(f"dataset 'synthetic' has no argument {sorted(unknown)[0]!r}; "
                        "it takes size, channels, train, val, test")
    size, channels = int(args.get("size", 32)), int(args.get("channels", 3))
    counts = {k: int(args.get(k, d)) for k, d in (("train", 2000), ("val", 400), ("test", 400))}
    if channels not in (1, 3) or size < 8 or min(counts.values()) < 1:
        raise DataError("dataset 'synthetic' needs channels 1 or 3, size >= 8 and at least 1 image per split")
    # Splits come from disjoint seeds so that no image is shared between them.
    splits: dict[str, Split] = {
        name: TensorSplit(*make_shapes(n, size, channels, seed=1000 * i + 17))
        for i, (name, n) in enumerate(counts.items())
    }
    mean, std = channel_stats(splits["train"].images)  # type: ignore[union-attr]
    return DataSource("synthetic", list(SHAPES), channels, size, splits, mean, std)
