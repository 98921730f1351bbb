"""Batches of uint8 images: an in-memory tensor loader (fast path) and a DataLoader for file lists.

Both yield ``(images uint8 [B,C,H,W], labels int64 [B])``. Keeping batches uint8 until they reach the
device makes host→device copies 4x smaller; :class:`Normalizer` turns them into model input there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from visiontrain.data.images import image_to_tensor, open_image
from visiontrain.data.sources import FileSplit, TensorSplit
from visiontrain.data.transforms import adapt_channels

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order of one epoch: a function of (n, seed, epoch) only, so a resumed run can
    regenerate — and verify — exactly the stream an interrupted run consumed."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class TensorLoader:
    """Shuffled batches sliced from one uint8 tensor; the order depends only on (seed, epoch)."""

    def __init__(self, split: TensorSplit, batch_size: int, *, shuffle: bool, seed: int = 0,
                 channels: int | None = None, transform: Callable | None = None) -> None:
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.channels, self.transform = channels, transform
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; ``start_batch`` skips batches already consumed (resume)."""
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> torch.Tensor:
        return epoch_order(len(self.split), self.seed, epoch, self.shuffle)

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.split)
        order = self.order(self.epoch) if self.shuffle else None
        for start in range(self.start_batch * self.batch_size, n, self.batch_size):
            if order is None:
                images = self.split.images[start:start + self.batch_size]
                labels = self.split.labels[start:start + self.batch_size]
            else:
                idx = order[start:start + self.batch_size]
                images, labels = self.split.images[idx], self.split.labels[idx]
            if self.channels is not None:
                images = adapt_channels(images, self.channels)
            if self.transform is not None:
                images = self.transform(images)
            yield images, labels


class FileDataset(Dataset):
    """Decodes one file per item with the safe image reader, then applies uint8 tensor transforms."""

    def __init__(self, split: FileSplit, channels: int, transform: Callable | None) -> None:
        self.paths: list[Path] = split.paths
        self.labels = split.labels
        self.channels, self.transform = channels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = image_to_tensor(open_image(self.paths[i], self.channels))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])


class _EpochSampler(Sampler[int]):
    """Indices of one epoch's order from ``start``; set by :class:`FileLoader` before each epoch."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.start = 0, 0

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(self.n, self.seed, self.epoch, self.shuffle)[self.start:].tolist())

    def __len__(self) -> int:
        return self.n - self.start


class FileLoader:
    """A DataLoader over a :class:`FileDataset` whose order depends only on (seed, epoch)."""

    def __init__(self, dataset: FileDataset, batch_size: int, *, shuffle: bool, seed: int, workers: int,
                 pin_memory: bool = False) -> None:
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.sampler = _EpochSampler(len(dataset), seed, shuffle)
        # Worker seeds come from this generator; reseeded per epoch so they depend on (seed, epoch) too.
        self._gen = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 generator=self._gen, pin_memory=pin_memory, persistent_workers=workers > 0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.epoch, self.sampler.start = epoch, start_batch * self.batch_size

    def order(self, epoch: int) -> torch.Tensor:
        return epoch_order(len(self.dataset), self.seed, epoch, self.shuffle)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Batch]:
        self._gen.manual_seed(self.seed * 100_003 + self.sampler.epoch)
        return iter(self.loader)


Loader = TensorLoader | FileLoader


class Normalizer:
    """uint8 [B,C,H,W] → float32 normalized with per-channel mean/std, on the tensor's device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = mean, std
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.device not in self._cache:
            shape = (1, len(self.mean), 1, 1)
            self._cache[images.device] = (
                torch.tensor(self.mean, device=images.device).view(shape) * 255,
                torch.tensor(self.std, device=images.device).view(shape) * 255,
            )
        mean, std = self._cache[images.device]
        return (images.float() - mean) / std
