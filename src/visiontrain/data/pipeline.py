"""From a source and its transform specs to loaders: what is cached in memory, how, and what streams.

Tensor sources (MNIST, CIFAR, synthetic) are already one uint8 tensor. File and item sources are decoded
once into memory when they fit ``cache_mb`` (``cache: auto``): evaluation splits through their whole
(deterministic) pipeline, so cached evaluation equals streamed evaluation exactly; the training split
through the deterministic head of its pipeline when that gives a fixed size, else at ``size * 8/7`` on the
shorter side, centre square — the random rest then runs per batch (see ``augment``). Larger sets stream
through a DataLoader with workers, pinned memory and persistent workers; JPEGs are decoded at reduced scale
(Pillow's draft mode, measured 2.4x faster than a full decode on 2000x1500 photos; torchvision's
``decode_jpeg`` on the CPU was 1.4x) when that still leaves twice the input size.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import torch

from visiontrain.config import DataConfig
from visiontrain.data.augment import BatchPipeline
from visiontrain.data.batching import BadImageLog, collate_marked
from visiontrain.data.cache import decode_to_memory
from visiontrain.data.decode import batch_decoder_works
from visiontrain.data.guard import loader_errors
from visiontrain.data.loaders import FileDataset, FileLoader, InMemory, Loader, TensorLoader
from visiontrain.data.shards import ShardSplit
from visiontrain.data.streaming import StreamItems, StreamLoader
from visiontrain.data.transforms import (
    DETERMINISTIC,
    Spec,
    adapt_channels,
    build_transforms,
    is_deterministic,
    margin_size,
)
from visiontrain.data.types import FileSplit, ItemSplit, Split, StreamSplit, TensorSplit, channel_stats
from visiontrain.errors import ConfigError
from visiontrain.limits import cap_workers

_CACHE_WORKERS_FROM = 1000  # images: below this, worker start-up costs more than it saves
_ESTIMATE_FROM = 1000  # training images: below this `cache: auto` caches without measuring (seconds at most)
_SAMPLE = 16  # files decoded to estimate what caching costs and saves


@dataclass
class LoaderPlan:
    """How to load one split: its specs, and where the loader runs."""

    specs: list[Spec]
    train: bool
    channels: int
    size: int
    device: torch.device
    pin_memory: bool


def make_loader(split: Split, plan: LoaderPlan, cfg: DataConfig, seed: int, bad_log: BadImageLog,
                cache: bool) -> Loader:
    """A loader for ``split``: in memory (tensor ops) when it is a tensor or ``cache`` is set, else streamed."""
    batch_size = cfg.batch_size if plan.train else cfg.eval_batch_size
    specs = plan.specs
    if isinstance(split, StreamSplit):  # read in order, never cached: memory bounded by the shuffle buffer
        items = StreamItems(split, plan.channels, build_transforms(specs, _where(plan)), seed=seed, shuffle=plan.train,
                            max_pixels=cfg.max_pixels)
        return StreamLoader(items, batch_size, workers=cfg.workers, pin_memory=plan.pin_memory, bad_log=bad_log)
    if not isinstance(split, TensorSplit) and cache:
        split, specs = _cache(split, plan, cfg, bad_log)
    if isinstance(split, TensorSplit):
        pipeline = BatchPipeline(specs, _where(plan), plan.device) if specs else None
        if pipeline is None or not pipeline.per_image or plan.device.type != "cpu":
            return TensorLoader(split, batch_size, shuffle=plan.train, seed=seed, channels=plan.channels,
                                transform=pipeline, device=plan.device)
        # Per-image random transforms on a CPU (RandomResizedCrop, ColorJitter…): run them in DataLoader
        # workers reading from memory — no decoding, and every core busy.
        split = ItemSplit(InMemory(split), torch.arange(len(split)), split.labels, "memory")
    draft = 2 * plan.size if plan.train else None  # eval decodes in full: identical to `predict` on a file
    dataset = FileDataset(split, plan.channels, build_transforms(specs, _where(plan)), seed=seed,
                          max_pixels=cfg.max_pixels, draft=draft, timeout_s=cfg.item_timeout_s,
                          batch_device=decode_device(cfg, plan, split))
    order = split.epoch_order(plan.train, seed) if isinstance(split, ShardSplit) else None  # shard order, windowed
    return FileLoader(dataset, batch_size, shuffle=plan.train, seed=seed, workers=cfg.workers,
                      pin_memory=plan.pin_memory, bad_log=bad_log, order=order)


def decode_device(cfg: DataConfig, plan: LoaderPlan, split: Split) -> torch.device | None:
    """Where the streamed training files (a folder's, or packed shards' members) are decoded per batch (``decode``),
    or None: per image in the workers.

    Only training files: evaluation decodes each file as ``predict`` does, so their numbers agree. ``gpu`` decodes
    on the training device whatever it is (on a CPU run, the batch path on the CPU); ``auto`` only on CUDA, and
    only where torchvision's ``decode_jpeg`` works there.
    """
    if not plan.train or not isinstance(split, FileSplit | ShardSplit) or cfg.decode == "cpu":
        return None
    if cfg.decode == "gpu" or (plan.device.type == "cuda" and batch_decoder_works(plan.device)):
        return plan.device
    return None


def _where(plan: LoaderPlan) -> str:
    return "data.transforms.train" if plan.train else "data.transforms.eval"


def _cache(split: FileSplit | ItemSplit, plan: LoaderPlan, cfg: DataConfig,
           bad_log: BadImageLog) -> tuple[TensorSplit, list[Spec]]:
    """Decode ``split`` once; return it with the specs still to apply per batch."""
    head, rest, side = cache_geometry(plan.specs, plan.size, plan.channels)
    workers = max(cfg.workers, min(os.cpu_count() or 1, 8)) if len(split) >= _CACHE_WORKERS_FROM else cfg.workers
    log = (lambda line: print(f"note: {line}", file=sys.stderr, flush=True)) if len(split) >= 5000 else None
    # Per-image random transforms on a CPU read the cache from DataLoader workers (make_loader): decode into
    # shared memory at once instead of copying it there afterwards.
    shared = bool(rest) and plan.device.type == "cpu" and BatchPipeline(rest, _where(plan)).per_image
    cached = decode_to_memory(split, plan.channels, build_transforms(head), workers=workers, bad_log=bad_log,
                              max_pixels=cfg.max_pixels, draft=side if plan.train else None, log=log,
                              timeout_s=cfg.item_timeout_s, shared=shared)
    return cached, rest


def cache_pays(split: FileSplit | ItemSplit, plan: LoaderPlan, cfg: DataConfig, epochs: int) -> tuple[bool, str]:
    """Whether caching the training split pays back within ``epochs``, and why ("" when not measured).

    Caching decodes every image once before training starts; streaming decodes in workers while the model
    trains, so its first epoch's decoding is not a cost of its own (it overlaps the steps) and every later
    epoch decodes again. The cached epochs still run the random rest of the pipeline per image
    (RandomResizedCrop…). So caching pays when ``(epochs - 1) * (stream - rest) >= decode`` per image, each
    term measured in CPU-seconds of one thread on a few files: ``decode`` the cache's decode and fixed-size
    head, ``stream`` a streamed image (decode + the whole training pipeline), ``rest`` the cached per-image
    work. Measured against this (2 cores, 500x375 JPEGs at 224 px, RandomResizedCrop): caching lost at 2
    epochs and won from about 4 (docs/benchmarks.md#cache-memory).
    """
    n = len(split)
    if n < _ESTIMATE_FROM:
        return True, ""  # a few seconds of decoding at most: not worth measuring, nor a line
    head, rest, side = cache_geometry(plan.specs, plan.size, plan.channels)
    pick = torch.linspace(0, n - 1, min(_SAMPLE, n)).long()
    sample = split.subset(pick)
    common = {"max_pixels": cfg.max_pixels, "timeout_s": cfg.item_timeout_s}
    cached_set = FileDataset(sample, plan.channels, build_transforms(head), draft=side, **common)
    stream_set = FileDataset(sample, plan.channels, build_transforms(plan.specs, _where(plan)),
                             draft=2 * plan.size, **common)
    decode, images = _cpu_per_item(cached_set)
    stream, _ = _cpu_per_item(stream_set)
    rest_s = 0.0
    if rest and images:
        pipeline = BatchPipeline(rest, _where(plan))
        gen = torch.Generator().manual_seed(0)
        pipeline(torch.stack(images[:2]), gen)  # warm-up: first calls build kernels and caches
        batch = torch.stack(images)  # not timed: the loader's batches come stacked
        start = time.thread_time()
        pipeline(batch, gen)
        rest_s = (time.thread_time() - start) / len(images)
    saved = (epochs - 1) * (stream - rest_s)
    numbers = (f"decoding {n:,} images once ~{n * decode:.0f} CPU-s; {epochs} epoch(s) would save "
               f"~{max(0.0, n * saved):.0f} CPU-s of re-decoding")
    return saved >= decode, numbers


def _cpu_per_item(dataset: FileDataset) -> tuple[float, list[torch.Tensor]]:
    """CPU-seconds of this thread per item of ``dataset`` (the first one read twice: a warm-up) and its images."""
    dataset[0]
    images: list[torch.Tensor] = []
    start = time.thread_time()
    for i in range(len(dataset)):
        image, *_, error = dataset[i]
        if not error:
            images.append(image)
    return (time.thread_time() - start) / max(1, len(dataset)), images


def cache_geometry(specs: list[Spec], size: int, channels: int) -> tuple[list[Spec], list[Spec], int]:
    """(specs applied once when caching, specs applied per batch after, cached side in pixels)."""
    n = 0
    while n < len(specs) and specs[n]["name"] in DETERMINISTIC and specs[n]["name"] not in ("FiveCrop", "TenCrop"):
        n += 1
    head = specs[:n]
    side = fixed_side(head, channels)
    if side is not None:
        return head, specs[n:], side
    side = margin_size(size)
    return [{"name": "Resize", "size": side}, {"name": "CenterCrop", "size": [side, side]}], specs, side


def fixed_side(specs: list[Spec], channels: int) -> int | None:
    """The square side ``specs`` always produce (tried on two odd shapes), or None."""
    if not specs:
        return None
    transform = build_transforms(specs)
    shapes = {tuple(transform(torch.zeros(channels, h, w, dtype=torch.uint8)).shape) for h, w in ((61, 87), (93, 45))}
    if len(shapes) != 1:
        return None
    ((*_, height, width),) = shapes
    return height if height == width else None


def check_pipeline(specs: list[Spec], shape: tuple[int, int, int] | None, channels: int, size: int,
                   where: str) -> None:
    """Run ``specs`` on a dummy batch once: the output must be [channels, size, size] (per crop)."""
    shapes = [shape] if shape is not None else [(channels, 61, 87), (channels, 93, 45)]
    pipeline = BatchPipeline(specs, where)
    for c, h, w in shapes:
        try:
            out = pipeline(torch.randint(0, 256, (2, c, h, w), dtype=torch.uint8), torch.Generator().manual_seed(0))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ConfigError(f"{where}: the transforms fail on a {c}x{h}x{w} image: {exc}") from None
        if tuple(out.shape[-3:]) != (channels, size, size):
            got = "x".join(map(str, out.shape[-3:]))
            raise ConfigError(f"{where} make {got} images but the model takes {channels}x{size}x{size}; end "
                              f"the list with a crop or resize to {size} (and keep {channels} channels)")


def check_eval(specs: list[Spec], where: str = "data.transforms.eval") -> None:
    if not is_deterministic(specs):
        random = next(s["name"] for s in specs if s["name"] not in DETERMINISTIC)
        raise ConfigError(f"{where}: {random} is random; evaluation transforms must be deterministic "
                          "(Resize, CenterCrop, Pad, Grayscale, FiveCrop, TenCrop)")


def estimate_bytes(splits: dict[str, Split], plans: dict[str, LoaderPlan]) -> int:
    """Memory the file splits would take in the cache, in bytes."""
    total = 0
    for name, split in splits.items():
        if isinstance(split, TensorSplit | StreamSplit) or name not in plans:
            continue
        plan = plans[name]
        side = cache_geometry(plan.specs, plan.size, plan.channels)[2] if plan.train else plan.size
        crops = 10 if any(s["name"] == "TenCrop" for s in plan.specs) else (
            5 if any(s["name"] == "FiveCrop" for s in plan.specs) else 1)
        total += len(split) * plan.channels * side * side * crops
    return total


def sample_stats(split: Split, channels: int, limit: int = 500, seed: int = 0, max_pixels: int = 64 * 2**20,
                 workers: int = 0) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel (mean, std, images used) over up to ``limit`` images, picked at random (seeded).

    In-memory splits use every image. Files are decoded (shorter side 128 px: statistics barely move with
    resolution) and summed image by image, whole images, no crop.
    """
    from torch.utils.data import DataLoader

    if isinstance(split, TensorSplit):
        images = adapt_channels(split.images, channels) if split.images.shape[1] != channels else split.images
        return (*channel_stats(images), len(split))
    from torchvision.transforms import v2  # torchvision loads torch._dynamo (~2 CPU-s): only when it is used

    resize = v2.Resize(128, antialias=True)
    if isinstance(split, StreamSplit):  # no random access: the first images of the stream (the reader's order)
        dataset: FileDataset | StreamItems | list = StreamItems(split, channels, resize, seed=seed, shuffle=False,
                                                                 max_pixels=max_pixels)
        dataset = [item for _, item in zip(range(limit), dataset, strict=False)]
    else:
        count = min(limit, len(split))
        pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count]
        dataset = FileDataset(split.subset(torch.sort(pick).values), channels, resize, max_pixels=max_pixels,
                              draft=128)
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros_like(total)
    pixels, used = 0, 0
    with loader_errors():  # a worker killed (out of memory?): one line pointing at --workers 0
        procs = 0 if isinstance(dataset, list) else cap_workers(workers)  # a list: read already
        for images, _labels, _index, _bad in DataLoader(dataset, batch_size=1, num_workers=procs,  # type: ignore[arg-type]
                                                       collate_fn=collate_marked):
            if len(images):
                x = images[0].double() / 255
                total += x.sum(dim=(1, 2))
                squares += x.square().sum(dim=(1, 2))
                pixels += x.shape[1] * x.shape[2]
                used += 1
    if not used:
        return (0.5,) * channels, (0.25,) * channels, 0
    mean = total / pixels
    std = (squares / pixels - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist()), used


def split_shape(split: Split, channels: int) -> tuple[int, int, int] | None:
    if isinstance(split, TensorSplit):
        return channels, int(split.images.shape[-2]), int(split.images.shape[-1])
    return None


__all__ = ["LoaderPlan", "cache_geometry", "cache_pays", "check_eval", "check_pipeline", "decode_device",
           "estimate_bytes", "make_loader", "sample_stats", "split_shape"]
