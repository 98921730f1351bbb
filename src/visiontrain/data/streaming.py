"""Streams that never sit in memory (a Hugging Face ``IterableDataset``): decoded item by item in DataLoader
workers (:class:`StreamItems`) and batched by :class:`StreamLoader`, in an order that depends only on (seed, epoch,
worker count) — the reader's seeded shuffle buffer — with memory bounded by that buffer, not by the dataset.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from visiontrain.data.augment import one_thread
from visiontrain.data.batching import BadImageLog, Batch, check_even_split, collate_marked, mix_seed, shard_part
from visiontrain.data.guard import loader_errors
from visiontrain.data.images import DEFAULT_MAX_PIXELS, image_to_tensor, open_image
from visiontrain.data.types import StreamSplit
from visiontrain.errors import VisiontrainError
from visiontrain.host import bound_worker_heap
from visiontrain.limits import cap_workers


class StreamItems(IterableDataset):
    """A :class:`StreamSplit` decoded item by item (in DataLoader workers): ``(image, label, k, error)`` as
    :class:`FileDataset` gives them, ``k`` counting this worker's items. The reader splits the stream between
    workers (a Hugging Face dataset: by its shards); augmentation is seeded by (seed, epoch, worker, k)."""

    def __init__(self, split: StreamSplit, channels: int, transform: Callable | None, *, seed: int, shuffle: bool,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.split, self.channels, self.transform = split, channels, transform
        self.seed, self.shuffle, self.max_pixels, self.epoch = seed, shuffle, max_pixels, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any, int, str]]:
        worker = _worker()
        for k, (payload, label) in enumerate(self.split.reader.items(self.seed, self.epoch, self.shuffle)):
            yield self.decode(payload, label, worker, k)

    def decode(self, payload: Any, label: Any, worker: int, k: int) -> tuple[torch.Tensor, Any, int, str]:
        """Item ``k`` of ``worker``'s stream, decoded and augmented (seeded by seed, epoch, worker, k: the same pixels
        whichever process decodes it); a bad one is an empty image and its error."""
        try:
            image = image_to_tensor(open_image(payload, self.channels, max_pixels=self.max_pixels,
                                               name=self.name(worker, k)), contiguous=False)
        except VisiontrainError as exc:
            return torch.empty(0, dtype=torch.uint8), label, worker << 40 | k, str(exc)
        if self.transform is not None:
            torch.default_generator.manual_seed(mix_seed(self.seed, self.epoch, worker, k))
            with one_thread(image.device):
                image = self.transform(image)
        return image.contiguous(), label, worker << 40 | k, ""

    def name(self, worker: int, k: int) -> str:
        return f"{self.split.name}[item {k} of worker {worker}]" if worker else f"{self.split.name}[item {k}]"


def _worker() -> int:
    info = get_worker_info()
    return info.id if info is not None else 0


class StreamBatches(IterableDataset):
    """Batches made in the DataLoader workers: each worker cuts its stream into global batches of ``batch`` items
    and decodes only this rank's part of each (:func:`shard_part`) — the same items, seeds and pixels as one
    process, each item decoded by one rank only. A final global batch smaller than the process count is dropped
    with ``drop_tail`` (every rank reads the same stream, so all drop it)."""

    def __init__(self, items: StreamItems, batch: int, rank: int = 0, world: int = 1, drop_tail: bool = False) -> None:
        self.items, self.batch, self.rank, self.world, self.drop_tail = items, batch, rank, world, drop_tail

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]]:
        worker, items = _worker(), self.items
        stream = enumerate(items.split.reader.items(items.seed, items.epoch, items.shuffle))
        while chunk := list(itertools.islice(stream, self.batch)):
            if self.drop_tail and self.world > 1 and len(chunk) < self.world:
                return
            part = chunk[shard_part(len(chunk), self.rank, self.world)]
            yield collate_marked([items.decode(payload, label, worker, k) for k, (payload, label) in part])


def _as_is(batch: Any) -> Any:
    return batch


class StreamLoader:
    """Batches of a :class:`StreamSplit` through a DataLoader over :class:`StreamBatches`: the order depends only
    on (seed, epoch, worker count) — the reader's seeded shuffle buffer —, memory on the buffer, not the dataset.
    Resuming mid-epoch reads the stream again and drops the batches already trained on. Under torchrun each
    process keeps its part of every global batch, as the other loaders do."""

    def __init__(self, items: StreamItems, batch_size: int, *, workers: int, pin_memory: bool = False,
                 bad_log: BadImageLog | None = None) -> None:
        self.dataset, self.batch_size = items, batch_size
        self.shuffle, self.seed, self.epoch, self.start_batch = items.shuffle, items.seed, 0, 0
        self.workers, self.pin_memory = cap_workers(workers), pin_memory
        self.bad_log = bad_log or BadImageLog()
        self.images = None  # nothing in memory
        self.rank, self.world, self.drop_tail = 0, 1, False

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self.dataset.epoch = epoch

    def shard(self, rank: int, world: int, drop_tail: bool = True) -> None:
        """Decode only this rank's part of every global batch (every rank reads the stream's bytes)."""
        check_even_split(self.batch_size, world, drop_tail)
        self.rank, self.world, self.drop_tail = rank, world, drop_tail

    def order(self, epoch: int) -> torch.Tensor:
        """What the resume fingerprint hashes: the stream is a function of (seed, epoch), not a permutation."""
        return torch.full((self.num_samples,), mix_seed(self.seed, epoch, int(self.shuffle)) % 2**62)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.dataset.split)

    def __iter__(self) -> Iterator[Batch]:
        workers = min(self.workers, getattr(self.dataset.split.reader, "shards", self.workers))  # idle ones: none
        batches = StreamBatches(self.dataset, self.batch_size, self.rank, self.world, self.drop_tail)
        loader = DataLoader(batches, batch_size=None, num_workers=workers, collate_fn=_as_is,
                            pin_memory=self.pin_memory, prefetch_factor=4 if workers > 0 else None,
                            worker_init_fn=bound_worker_heap)
        first, self.start_batch = self.start_batch, 0
        with loader_errors():
            for batch, (images, labels, _index, bad) in enumerate(loader):
                if batch < first:
                    continue
                for k, message in bad:
                    self.bad_log.add(self.dataset.name(k >> 40, k & (2**40 - 1)), message)
                if len(images):
                    yield images, labels
