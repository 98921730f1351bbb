"""Batches of uint8 images: an in-memory tensor loader (fast path) and a DataLoader for files and items
(streams: :mod:`visiontrain.data.streaming`; the shared pieces: :mod:`visiontrain.data.batching`).

Both yield ``(images uint8 [B,C,H,W], labels [B])`` in an order that depends only on (seed, epoch), and
augment each batch from a generator seeded by (seed, epoch, batch) — so a resumed run sees the same stream
and any worker count gives the same images. Batches stay uint8 until they reach the device (4x smaller
copies); :class:`Normalizer` turns them into model input there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from visiontrain.data.augment import BatchPipeline, one_thread
from visiontrain.data.batching import (
    BadImageLog,
    Batch,
    EpochOrder,
    check_even_split,
    collate_bytes,
    collate_marked,
    epoch_order,
    mix_seed,
    shard_part,
    usable_samples,
)
from visiontrain.data.decode import decode_batch
from visiontrain.data.guard import DEFAULT_ITEM_TIMEOUT_S, item_deadline, loader_errors
from visiontrain.data.images import DEFAULT_MAX_PIXELS, image_to_tensor, item_to_tensor, open_image
from visiontrain.data.shards import ShardSplit
from visiontrain.data.streaming import StreamLoader
from visiontrain.data.transforms import adapt_channels
from visiontrain.data.types import FileSplit, ItemSplit, TensorSplit
from visiontrain.errors import DataError, ImageError, VisiontrainError
from visiontrain.host import bound_worker_heap
from visiontrain.limits import cap_workers


class TensorLoader:
    """Shuffled batches sliced from one uint8 tensor, augmented per image with batched tensor ops.

    With ``device`` set (a GPU), the images move there once and batches are cut and augmented there.
    """

    def __init__(self, split: TensorSplit, batch_size: int, *, shuffle: bool, seed: int = 0,
                 channels: int | None = None, transform: BatchPipeline | Callable | None = None,
                 device: torch.device | str | None = None) -> None:
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.channels, self.transform = channels, transform
        self.device = torch.device(device) if device is not None else split.images.device
        self.epoch, self.start_batch = 0, 0
        self.rank, self.world, self.drop_tail = 0, 1, False
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Epoch ``epoch`` from batch ``start_batch`` on (resuming mid-epoch skips the batches done)."""
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> torch.Tensor:
        return epoch_order(len(self.split), self.shuffle, self.seed, epoch)

    def shard(self, rank: int, world: int, drop_tail: bool = True) -> None:
        """Yield only this rank's part of every global batch (distributed data parallel). ``drop_tail``:
        drop a final global batch smaller than the process count (training); evaluation keeps it."""
        self.rank, self.world, self.drop_tail = rank, world, drop_tail

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    @property
    def num_samples(self) -> int:
        return usable_samples(len(self.split), self.batch_size, self.world if self.drop_tail else 1)

    @property
    def images(self) -> torch.Tensor:
        """The uint8 images [N, C, H, W] batches are cut from."""
        return self.split.images

    def __iter__(self) -> Iterator[Batch]:
        if self._images is None:  # moved once: later epochs slice on the device
            self._images, self._labels = self.split.images.to(self.device), self.split.labels.to(self.device)
        images_all, labels_all = self._images, self._labels
        assert labels_all is not None
        order = self.order(self.epoch).to(self.device) if self.shuffle else None
        first, self.start_batch = self.start_batch, 0  # a skip applies to one pass only
        for batch in range(first, len(self)):
            with one_thread(self.device):  # see augment: small CPU ops on a busy machine
                images, labels = self._batch(images_all, labels_all, order, batch)
            if self.world > 1:  # the whole global batch is cut and augmented, then sliced: same pixels as 1 process
                part = shard_part(len(labels), self.rank, self.world)
                images, labels = images[part], labels[part]
            yield images, labels

    def _batch(self, images_all: torch.Tensor, labels_all: torch.Tensor, order: torch.Tensor | None,
               batch: int) -> Batch:
        start = batch * self.batch_size
        if order is None:
            images, labels = images_all[start:start + self.batch_size], labels_all[start:start + self.batch_size]
        else:
            idx = order[start:start + self.batch_size]
            images, labels = images_all[idx], labels_all[idx]
        if self.channels is not None:
            images = adapt_channels(images, self.channels)
        if isinstance(self.transform, BatchPipeline):
            gen = torch.Generator(device=self.device).manual_seed(mix_seed(self.seed, self.epoch, batch))
            images = self.transform(images, gen)
        elif self.transform is not None:
            images = self.transform(images)
        return images, labels


class FileDataset(Dataset):
    """Decodes one file (or user Dataset item) per sample safely, then applies uint8 tensor transforms.

    Items are ``(image, label, index, error)``: a file that fails gives an empty image and the error text
    instead of raising, so the worker survives and the main process decides (see :class:`BadImageLog`).
    With ``batch_device`` set, an item is the file's bytes (uint8 [N]): :class:`FileLoader` decodes each batch on
    that device (:func:`visiontrain.data.decode.decode_batch`, nvJPEG on a GPU) and augments it there.
    """

    def __init__(self, split: FileSplit | ItemSplit | ShardSplit, channels: int, transform: Callable | None, *,
                 seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None,
                 timeout_s: float = DEFAULT_ITEM_TIMEOUT_S, batch_device: torch.device | str | None = None) -> None:
        self.split, self.labels = split, split.labels
        self.paths: list[Path] = split.paths if isinstance(split, FileSplit) else []
        self.channels, self.transform, self.seed = channels, transform, seed
        self.max_pixels, self.draft, self.timeout_s = max_pixels, draft, timeout_s
        self.batch_device = torch.device(batch_device) if batch_device is not None else None
        if self.batch_device is not None and not isinstance(split, FileSplit | ShardSplit):
            raise ValueError("batch_device decodes files; this split holds Dataset items")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, Any, int, str]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        try:
            with item_deadline(self.timeout_s, self.name(i)):  # a hung read becomes a bad file, named
                image = self._read_bytes(i) if self.batch_device is not None else self._read(i)
        except VisiontrainError as exc:
            return torch.empty(0, dtype=torch.uint8), self.labels[i], i, str(exc)
        if self.batch_device is not None:
            return image, self.labels[i], i, ""  # decoded and augmented per batch, on the device
        return self.augment(image, i, epoch).contiguous(), self.labels[i], i, ""

    def augment(self, image: torch.Tensor, i: int, epoch: int) -> torch.Tensor:
        """The transforms, as a function of (seed, epoch, i): the same pixels in a worker or on the device."""
        if self.transform is None:
            return image
        # Only the CPU generator: torch.manual_seed also queues lazy CUDA/XPU seeding with a stack trace each
        # call (measured ~1 ms per image). Random parameters are drawn on the CPU even for a GPU tensor.
        torch.default_generator.manual_seed(mix_seed(self.seed, epoch, i))
        with one_thread(image.device):  # workers have one thread already; the main process may not
            return self.transform(image)

    def _read_bytes(self, i: int) -> torch.Tensor:
        if isinstance(self.split, ShardSplit):
            data = self.split.read(i)  # one positioned read; a short shard is a DataError naming the member
        else:
            path = self.paths[i]
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ImageError(str(path), f"cannot read file ({exc.strerror or exc})", "check the disk/file") \
                    from None
        # An empty file gives an empty tensor: the header probe of decode_batch names it.
        return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)

    def _read(self, i: int) -> torch.Tensor:
        if isinstance(self.split, ItemSplit):
            return _read_item(self.split, i, self.channels)
        if isinstance(self.split, ShardSplit):  # one positioned read from its shard, then the same guarded decode
            return image_to_tensor(self.split.open(i, self.channels, self.max_pixels, self.draft), contiguous=False)
        # A CHW view of Pillow's HWC pixels, not a copy: the resize that follows is faster on this layout.
        return image_to_tensor(open_image(self.paths[i], self.channels, max_pixels=self.max_pixels,
                                          draft=self.draft), contiguous=False)

    def name(self, i: int) -> str:
        if isinstance(self.split, ItemSplit):
            return f"{self.split.name}[{int(self.split.indices[i])}]"
        if isinstance(self.split, ShardSplit):
            return self.split.name(i)
        return str(self.paths[i])


def _read_item(split: ItemSplit, i: int, channels: int) -> torch.Tensor:
    name = f"{split.name}[{int(split.indices[i])}]"
    try:
        item = split.dataset[int(split.indices[i])]
    except VisiontrainError:  # a source's own reader (data/hf.py) says what is wrong with the item itself
        raise
    except Exception as exc:  # the user's __getitem__ failed on this item: report it like a bad file
        raise DataError(f"{name}: your Dataset raised {type(exc).__name__}: {exc}") from None
    image = item[0] if isinstance(item, tuple | list) else item
    return item_to_tensor(image, channels, name)


class InMemory:
    """A decoded uint8 split as a map-style dataset (``[i]`` → image, label) for DataLoader workers."""

    def __init__(self, split: TensorSplit) -> None:
        self.images, self.labels = split.images.share_memory_(), split.labels  # workers read, never copy

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


class _EpochSampler(Sampler):
    """Yields (index, epoch) in the epoch's order from ``start`` on; set by the loader in the main process."""

    def __init__(self, n: int, shuffle: bool, seed: int, order: EpochOrder | None = None) -> None:
        self.n, self.shuffle, self.seed, self.epoch, self.start = n, shuffle, seed, 0, 0
        self.epoch_order = order or functools.partial(epoch_order, n, shuffle, seed)
        self.rank, self.world, self.global_batch = 0, 1, 1  # sharded: this rank's part of each global batch
        self.drop_tail = False

    def _indices(self) -> torch.Tensor:
        usable = usable_samples(self.n, self.global_batch, self.world if self.drop_tail else 1)
        order = self.epoch_order(self.epoch)[self.start:usable]
        if self.world == 1:
            return order
        parts = [b[shard_part(len(b), self.rank, self.world)] for b in order.split(self.global_batch)]
        return torch.cat(parts) if parts else order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(int(i), self.epoch) for i in self._indices()])

    def __len__(self) -> int:
        return len(self._indices())


class FileLoader:
    """A DataLoader over a :class:`FileDataset`: workers, pinned memory, persistent workers, seeded order
    (``order``: another order of each epoch than a permutation, e.g. data/shards.py's shard order)."""

    def __init__(self, dataset: FileDataset, batch_size: int, *, shuffle: bool, seed: int, workers: int,
                 pin_memory: bool = False, bad_log: BadImageLog | None = None, order: EpochOrder | None = None) -> None:
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.epoch = 0
        self.bad_log = bad_log or BadImageLog()
        self.workers, self.pin_memory = cap_workers(workers), pin_memory
        self._sampler = _EpochSampler(len(dataset), shuffle, seed, order)
        self.loader = self._data_loader(batch_size)

    def _data_loader(self, batch_size: int) -> DataLoader:
        workers, raw = self.workers, self.dataset.batch_device is not None
        return DataLoader(self.dataset, batch_size=batch_size, sampler=self._sampler, num_workers=workers,
                          collate_fn=collate_bytes if raw else collate_marked, pin_memory=self.pin_memory and not raw,
                          persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                          worker_init_fn=bound_worker_heap)

    def shard(self, rank: int, world: int, drop_tail: bool = True) -> None:
        """Decode only this rank's part of every global batch; the DataLoader batches by the per-rank size."""
        check_even_split(self.batch_size, world, drop_tail)
        self._sampler.rank, self._sampler.world, self._sampler.global_batch = rank, world, self.batch_size
        self._sampler.drop_tail = drop_tail
        self.loader = self._data_loader(-(-self.batch_size // world))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self._sampler.epoch, self._sampler.start = epoch, start_batch * self.batch_size

    def order(self, epoch: int) -> torch.Tensor:
        return self._sampler.epoch_order(epoch)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    @property
    def num_samples(self) -> int:
        return usable_samples(len(self.dataset), self.batch_size,
                              self._sampler.world if self._sampler.drop_tail else 1)

    @property
    def images(self) -> torch.Tensor | None:
        """The decoded uint8 images when this loader reads from memory (not files), else None."""
        split = self.dataset.split
        return split.dataset.images if isinstance(split, ItemSplit) and isinstance(split.dataset, InMemory) else None

    def __iter__(self) -> Iterator[Batch]:
        try:
            with loader_errors():  # a worker killed (out of memory?) or stuck: one line, not a traceback
                for images, labels, index, bad in self.loader:
                    for i, message in bad:
                        self.bad_log.add(self.dataset.name(i), message)
                    if self.dataset.batch_device is not None:
                        images, labels = self._decode(images, labels, index)
                    if len(images):
                        yield images, labels
        finally:
            self._sampler.start = 0

    def _decode(self, payloads: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor) -> Batch:
        """A batch of file bytes → decoded on the dataset's device, augmented there per image, stacked."""
        data, rows = self.dataset, index.tolist()
        decoded = decode_batch(payloads, data.channels, data.batch_device or "cpu", max_pixels=data.max_pixels,
                               names=[data.name(i) for i in rows])
        images, keep = [], []
        for j, (image, i) in enumerate(zip(decoded, rows, strict=True)):
            if isinstance(image, ImageError):
                self.bad_log.add(data.name(i), str(image))
                continue
            images.append(data.augment(image, i, self.epoch).contiguous())
            keep.append(j)
        if not images:
            return torch.empty(0, dtype=torch.uint8), labels[:0]
        return torch.stack(images), labels[keep]


Loader = TensorLoader | FileLoader | StreamLoader


class Normalizer:
    """uint8 [..., C, H, W] → float32 normalized with per-channel mean/std, on the tensor's device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = mean, std
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.device not in self._cache:
            shape = (len(self.mean), 1, 1)
            self._cache[images.device] = (
                torch.tensor(self.mean, device=images.device).view(shape) * 255,
                torch.tensor(self.std, device=images.device).view(shape) * 255,
            )
        mean, std = self._cache[images.device]
        return (images.float() - mean) / std
