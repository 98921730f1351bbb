"""Data: sources → splits → loaders of uint8 batches, plus the preprocessing a checkpoint carries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from visiontrain.config import DataConfig
from visiontrain.data.loaders import FileDataset, FileLoader, Loader, Normalizer, TensorLoader
from visiontrain.data.sources import DATASETS, DESCRIPTIONS, DataSource, FileSplit, TensorSplit, load_source
from visiontrain.data.transforms import build_transforms, eval_specs, train_specs
from visiontrain.errors import DataError

__all__ = ["DATASETS", "DESCRIPTIONS", "DataBundle", "Normalizer", "Preprocessing", "build_data", "load_source"]


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


@dataclass
class DataBundle:
    source: DataSource
    prep: Preprocessing
    loaders: dict[str, Loader]  # "train", "val", "test" where the source has them

    @property
    def classes(self) -> list[str]:
        return self.source.classes


def build_data(cfg: DataConfig, seed: int, *, channels: int | None = None, size: int | None = None,
               prep: Preprocessing | None = None, splits: tuple[str, ...] = ("train", "val", "test"),
               pin_memory: bool = False) -> DataBundle:
    """Load ``cfg``'s source and make loaders.

    ``channels``/``size`` are what the model requires (None = the data's own); ``prep`` fixes the whole
    preprocessing instead (evaluating a trained checkpoint on new data).
    """
    source = load_source(cfg, seed)
    if prep is None:
        size = cfg.image_size or size or source.size or 64
        channels = channels or source.channels
        mean, std = source.mean, source.std
        if len(mean) != channels:  # gray stats for RGB input and back: average / repeat
            avg = (sum(mean) / len(mean), sum(std) / len(std))
            mean, std = (avg[0],) * channels, (avg[1],) * channels
        prep = Preprocessing(channels, size, mean, std, eval_specs(size, from_files=source.size is None))
    loaders: dict[str, Loader] = {}
    for name in splits:
        if name in source.splits:
            loaders[name] = _loader(source.splits[name], prep, cfg, seed, train=(name == "train"),
                                    pin_memory=pin_memory)
    if "train" in splits and len(source.splits["train"]) == 0:
        raise DataError(f"dataset {cfg.name!r} has no training images")
    return DataBundle(source, prep, loaders)


def _loader(split: TensorSplit | FileSplit, prep: Preprocessing, cfg: DataConfig, seed: int, *, train: bool,
            pin_memory: bool) -> Loader:
    from_files = isinstance(split, FileSplit)
    specs = train_specs(prep.size, from_files) if train else prep.eval_transforms
    batch_size = cfg.batch_size if train else cfg.eval_batch_size
    if isinstance(split, TensorSplit):
        same_size = tuple(split.images.shape[-2:]) == (prep.size, prep.size)
        transform = None if same_size and not _random(specs) else build_transforms(specs)
        return TensorLoader(split, batch_size, shuffle=train, seed=seed, channels=prep.channels,
                            transform=transform)
    dataset = FileDataset(split, prep.channels, build_transforms(specs))
    return FileLoader(dataset, batch_size, shuffle=train, seed=seed, workers=cfg.workers, pin_memory=pin_memory)


def _random(specs: list[dict[str, Any]]) -> bool:
    return any(s["name"].startswith("Random") or s["name"] == "ColorJitter" for s in specs)
