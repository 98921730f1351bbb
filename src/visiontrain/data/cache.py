"""The in-memory cache of an image split: every image decoded once, through the deterministic part of its
pipeline, into one uint8 tensor that the tensor loaders batch from (``cache: memory`` / ``auto``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from visiontrain.data.batching import BadImageLog, collate_marked
from visiontrain.data.guard import DEFAULT_ITEM_TIMEOUT_S, loader_errors
from visiontrain.data.loaders import FileDataset
from visiontrain.data.types import FileSplit, ItemSplit, TensorSplit
from visiontrain.errors import DataError
from visiontrain.host import bound_worker_heap
from visiontrain.limits import cap_workers


def decode_to_memory(split: FileSplit | ItemSplit, channels: int, transform: Callable, *, workers: int,
                     bad_log: BadImageLog, max_pixels: int, draft: int | None,
                     log: Callable[[str], None] | None = None,
                     timeout_s: float = DEFAULT_ITEM_TIMEOUT_S, shared: bool = False) -> TensorSplit:
    """Decode every image once through ``transform`` (deterministic, fixed size) into one uint8 tensor.

    Batches are copied straight into one tensor allocated for the whole split when the first batch gives the
    image shape: no list of batches joined at the end, which peaked at twice the cache's size (three times
    with the copy into shared memory that DataLoader workers read from). ``shared`` allocates it in shared
    memory at once. Rows of images that fail to decode are left unused at the end (a view drops them).
    """
    dataset = FileDataset(split, channels, transform, max_pixels=max_pixels, draft=draft, timeout_s=timeout_s)
    workers = cap_workers(workers)
    # The batch in hand is the only memory beyond the cache (64 images at 256 px: 12 MiB). Batches of 16 cut
    # that to 3 MiB but cost the main process 1.6x the CPU time (one hand-over from the workers per batch).
    loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=collate_marked,
                        worker_init_fn=bound_worker_heap)
    if log is not None:
        log(f"decoding {len(dataset):,} images once into memory ({workers or 'no'} worker processes)")
    out: torch.Tensor | None = None
    kept = torch.empty(len(dataset), dtype=torch.int64)
    filled = 0
    with loader_errors():
        for images, _labels, index, bad in loader:
            for i, message in bad:
                bad_log.add(dataset.name(i), message)
            if len(images):
                if out is None:
                    out = _preallocate((len(dataset), *images.shape[1:]), shared)
                out[filled:filled + len(images)] = images
                kept[filled:filled + len(images)] = index
                filled += len(images)
                del images  # the batch's (shared-memory) block goes now, not when the next one arrives
    if out is None:
        raise DataError(f"none of the {len(dataset):,} images could be decoded (see bad_images.txt)")
    return TensorSplit(out[:filled] if filled < len(out) else out, split.labels[kept[:filled]])


def _preallocate(shape: tuple[int, ...], shared: bool) -> torch.Tensor:
    out = torch.empty(shape, dtype=torch.uint8)
    # Moved to shared memory while still untouched: the copy reads zero pages, so the peak stays one cache.
    return out.share_memory_() if shared else out


__all__ = ["decode_to_memory"]
