"""Data: sources → splits → loaders of uint8 batches, plus the preprocessing a checkpoint carries.

>>> from visiontrain.config import DataConfig
>>> bundle = build_data(DataConfig(name="synthetic", args={"train": 64, "val": 16, "test": 16}), seed=0)
>>> images, labels = next(iter(bundle.loaders["train"]))
>>> images.dtype, tuple(images.shape[1:]), bundle.classes[:2]
(torch.uint8, (3, 32, 32), ['circle', 'square'])
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from visiontrain.config import DataConfig
from visiontrain.data import torchvision_sets  # noqa: F401  (registers cifar10, cifar100, fashion_mnist, kmnist)
from visiontrain.data.batching import BadImageLog
from visiontrain.data.loaders import FileDataset, FileLoader, Loader, Normalizer, TensorLoader
from visiontrain.data.pipeline import (
    LoaderPlan,
    cache_pays,
    check_eval,
    check_pipeline,
    estimate_bytes,
    make_loader,
    sample_stats,
    split_shape,
)
from visiontrain.data.sources import DATASETS, DESCRIPTIONS, DataSource, FileSplit, TensorSplit, load_source
from visiontrain.data.splits import split_json
from visiontrain.data.transforms import Spec, resolve, split_normalize, tta_crops
from visiontrain.errors import DataError
from visiontrain.fileio import atomic_write_text
from visiontrain.text import utf8_safe

__all__ = ["DATASETS", "DESCRIPTIONS", "DataBundle", "FileDataset", "FileLoader", "FileSplit", "Normalizer",
           "Preprocessing", "TensorLoader", "TensorSplit", "build_data", "load_source"]

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn an image file into model input; saved in every checkpoint."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_transforms: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(int(d["channels"]), int(d["size"]), tuple(d["mean"]), tuple(d["std"]),
                   list(d.get("eval_transforms", [])))

    def normalizer(self) -> Normalizer:
        return Normalizer(self.mean, self.std)

    @property
    def crops(self) -> int:
        """Crops per image at evaluation (FiveCrop → 5: batches are [B, 5, C, H, W]; average the outputs)."""
        return tta_crops(self.eval_transforms)


@dataclass
class DataBundle:
    source: DataSource
    prep: Preprocessing
    loaders: dict[str, Loader]  # "train", "val", "test" where the source has them
    bad_images: BadImageLog = field(default_factory=BadImageLog)
    train_transforms: list[Spec] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """Class names; for regression, the name of the one output (``["value"]``)."""
        return self.source.classes

    @property
    def task(self) -> str:
        return self.source.task

    @property
    def target_dtype(self) -> torch.dtype:
        return self.source.target_dtype

    def artifacts(self) -> dict[str, str]:
        """Files for the run folder: ``split.json`` (a generated or reused split), ``bad_images.txt``,
        ``skipped_links.txt`` (symlinks in a data folder that were not followed: link, target, why)."""
        out: dict[str, str] = {}
        if self.source.split_record is not None:
            out["split.json"] = split_json(self.source.split_record)
        if self.bad_images.entries:
            out["bad_images.txt"] = self.bad_images.text()
        if self.source.skipped_links:
            out["skipped_links.txt"] = "".join("\t".join(map(utf8_safe, entry)) + "\n"
                                               for entry in self.source.skipped_links)
        return out

    def write_artifacts(self, run_dir: str | Path) -> None:
        """Write :meth:`artifacts` into ``run_dir``; images found bad later (mid-epoch) are added as they come."""
        folder = Path(run_dir)
        for name, text in self.artifacts().items():
            atomic_write_text(folder / name, text)
        self.bad_images.on_change(lambda: atomic_write_text(folder / "bad_images.txt", self.bad_images.text()))


def build_data(cfg: DataConfig, seed: int, *, channels: int | None = None, size: int | None = None,
               prep: Preprocessing | None = None, splits: tuple[str, ...] = ("train", "val", "test"),
               pin_memory: bool = False, device: torch.device | str | None = None,
               model_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
               photo_eval: list[Spec] | None = None, epochs: int | None = None) -> DataBundle:
    """Load ``cfg``'s source and make loaders.

    ``channels``/``size`` are what the model requires (None = the data's own); ``prep`` fixes the whole
    preprocessing instead (evaluating a trained checkpoint on new data: every split then gets the eval
    transforms, unshuffled). ``device`` is where in-memory batches are cut and augmented (default: the
    GPU when ``pin_memory`` says training runs there). ``model_stats`` are the mean/std a pretrained model
    expects, used by ``normalize: auto``; ``photo_eval`` the evaluation pipeline pretrained weights were made
    with (resize, centre crop, interpolation), used for photos of mixed sizes when no eval transforms are given.
    ``epochs`` (the planned training epochs) lets ``cache: auto`` skip a cache that would not pay back in
    them; None caches whatever fits ``cache_mb``.
    """
    source = load_source(cfg, seed, need_val="val" in splits)
    if "train" in splits and len(source.splits["train"]) == 0:
        raise DataError(f"dataset {cfg.name!r} has no training images")
    empty = [name for name in splits if name in source.splits and len(source.splits[name]) == 0]
    if empty:  # caught here, before a run folder exists: an empty split would fail only after the first epoch
        raise DataError(f"dataset {cfg.name!r}: its {empty[0]} split has no images; add images to it or leave it out")
    if device is None:
        device = "cuda" if pin_memory and torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    bad_log = BadImageLog(cfg.bad_images, source.bad_images)
    training = prep is None
    if prep is None:
        prep, train_specs, stats = resolve_preprocessing(cfg, source, channels, size, photo_eval)
    else:
        train_specs, stats = prep.eval_transforms, (prep.mean, prep.std)
        check_eval(train_specs, "checkpoint eval_transforms")
    plans = {name: plan_for(source, name, prep, train_specs if training else None, device, pin_memory)
             for name in splits if name in source.splits}
    cache = training and _use_cache(cfg, source, plans, epochs)
    loaders = {name: make_loader(source.splits[name], plan, cfg, seed, bad_log, cache) for name, plan in plans.items()}
    if stats is None:
        stats = _stats(cfg, source, prep.channels, model_stats, seed)
    mean, std = _fit_channels(stats, prep.channels)
    prep = Preprocessing(prep.channels, prep.size, mean, std, prep.eval_transforms)
    train_loader = loaders.get("train")
    if isinstance(train_loader, FileLoader) and train_loader.dataset.batch_device is not None:
        device = train_loader.dataset.batch_device
        source.notes.append(f"training images are decoded per batch on {device} (decode: {cfg.decode}; JPEGs with "
                            "torchvision's decode_jpeg), the workers only read files")
    return DataBundle(source, prep, loaders, bad_log, train_specs if training else [])


def resolve_preprocessing(cfg: DataConfig, source: DataSource, channels: int | None, size: int | None,
                          photo_eval: list[Spec] | None = None) -> tuple[Preprocessing, list[Spec], tuple | None]:
    """(preprocessing without statistics yet, training specs, mean/std of a Normalize spec or None)."""
    size = cfg.image_size or size or source.size or 64
    channels = channels or source.channels
    from_files = not isinstance(source.splits["train"], TensorSplit)
    train_specs, eval_list = resolve(cfg.transforms, size, source.preset, from_files, source.size)
    if photo_eval and from_files and source.size is None and cfg.transforms.get("eval") is None \
            and photo_eval[-1].get("size") == [size, size]:  # the weights' own pipeline, when it makes this size
        eval_list = [dict(spec) for spec in photo_eval]
    train_specs, train_norm = split_normalize(train_specs)
    eval_list, eval_norm = split_normalize(eval_list)
    check_eval(eval_list)
    return Preprocessing(channels, size, (0.0,), (1.0,), eval_list), train_specs, train_norm or eval_norm


def plan_for(source: DataSource, name: str, prep: Preprocessing, train_specs: list[Spec] | None,
             device: torch.device, pin_memory: bool = False) -> LoaderPlan:
    """How split ``name`` is loaded (augmented when it is train and ``train_specs`` are given); checked once."""
    train = name == "train" and train_specs is not None
    plan = LoaderPlan(train_specs if train and train_specs is not None else prep.eval_transforms, train,
                      prep.channels, prep.size, device, pin_memory)
    check_pipeline(plan.specs, split_shape(source.splits[name], prep.channels), prep.channels, prep.size,
                   "data.transforms.train" if plan.train else "data.transforms.eval")
    return plan


def _use_cache(cfg: DataConfig, source: DataSource, plans: dict[str, LoaderPlan], epochs: int | None) -> bool:
    if cfg.cache == "off":
        return False
    if cfg.cache == "memory":
        return True
    size = estimate_bytes(source.splits, plans)
    if size > cfg.cache_mb * 2**20:
        return False
    train = source.splits.get("train")
    if epochs is None or "train" not in plans or isinstance(train, TensorSplit) or train is None:
        return True
    pays, why = cache_pays(train, plans["train"], cfg, epochs)
    if why:
        verdict = "caching in memory" if pays else "streaming (caching would not pay back)"
        print(f"note: cache auto: {verdict}: {size / 2**20:,.0f} MiB, {why}", file=sys.stderr, flush=True)
    return pays


def _stats(cfg: DataConfig, source: DataSource, channels: int, model_stats: tuple | None,
           seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalization mean/std ``cfg.normalize`` asks for (see DataConfig)."""
    if cfg.normalize == "none":
        return (0.0,) * channels, (1.0,) * channels
    if cfg.normalize == "imagenet":
        return IMAGENET_STATS
    if cfg.normalize == "auto" and model_stats is not None:
        return model_stats
    if cfg.normalize == "auto" and source.mean is not None and source.std is not None:
        return source.mean, source.std
    # From the source's own images, never the cache: the same data gives the same statistics, cached or not.
    split = source.splits["train"]
    mean, std, used = sample_stats(split, channels, 500, seed, cfg.max_pixels, cfg.workers)
    if used < len(split):
        source.notes.append(f"normalization statistics estimated from {used} training images (`visiontrain data "
                            "stats` computes them on more)")
    return mean, std


def _fit_channels(stats: tuple, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Gray stats for RGB input and back: repeat / average."""
    mean, std = tuple(float(v) for v in stats[0]), tuple(float(v) for v in stats[1])
    if len(mean) != channels:
        avg = (sum(mean) / len(mean), sum(std) / len(std))
        mean, std = (round(avg[0], 4),) * channels, (round(avg[1], 4),) * channels
    return mean, std
