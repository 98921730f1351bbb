"""build_data: sources and splits, the in-memory fast path, normalization, transform config, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from visiontrain.config import DataConfig, load_config
from visiontrain.data import Preprocessing, build_data
from visiontrain.data.loaders import FileLoader, TensorLoader
from visiontrain.data.sources import load_source
from visiontrain.errors import ConfigError, DataError

SYNTH = {"train": 40, "val": 8, "test": 8, "size": 16}


def _folder(root: Path, per_class: int = 6, size: tuple[int, int] | None = None) -> Path:
    for c, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size or (20 + 3 * i, 16 + 2 * i), colour).save(root / c / f"{i}.png")
    return root


def test_folder_with_train_val_test_subtrees(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        _folder(tmp_path / split, per_class=2)
    source = load_source(DataConfig(name=str(tmp_path)), 0)
    assert source.classes == ["blue", "red"]
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 4, "val": 4, "test": 4}
    assert source.split_record is None  # nothing generated: the folder has its own val


def test_generated_split_is_saved_and_reused(tmp_path: Path) -> None:
    _folder(tmp_path / "d", per_class=10)
    first = build_data(DataConfig(name=str(tmp_path / "d"), val_split=0.3), seed=5)
    record = json.loads(first.artifacts()["split.json"])
    assert record["seed"] == 5 and len(record["val_paths"]) == 6
    assert record["val_paths"][0].startswith(("blue/", "red/"))
    (tmp_path / "split.json").write_text(first.artifacts()["split.json"])
    again = load_source(DataConfig(name=str(tmp_path / "d"), split_file=str(tmp_path / "split.json")), seed=99)
    assert again.splits["val"].paths == first.source.splits["val"].paths  # another seed, the same split
    (tmp_path / "d" / "red" / "0.png").unlink()
    if "red/0.png" in record["val_paths"]:
        with pytest.raises(DataError, match="not in the data"):
            load_source(DataConfig(name=str(tmp_path / "d"), split_file=str(tmp_path / "split.json")), 0)
    tensors = load_source(DataConfig(name="synthetic", args={**SYNTH, "val": 1}, val_split=0.0), 0)
    assert tensors.split_record is None


def test_small_folders_are_decoded_once_into_memory_and_large_ones_stream(tmp_path: Path) -> None:
    _folder(tmp_path)
    small = build_data(DataConfig(name=str(tmp_path), val_split=0.25, batch_size=4), 0, size=16)
    assert all(loader.images is not None for loader in small.loaders.values())
    # Training images cached at size * 8/7: RandomResizedCrop (per image on a CPU: in DataLoader workers) cuts
    # from them; evaluation images cached at the final size, batched by the tensor loader.
    assert small.loaders["train"].images.shape[1:] == (3, 18, 18)
    assert isinstance(small.loaders["val"], TensorLoader) and small.loaders["val"].images.shape[1:] == (3, 16, 16)
    cifar_like = build_data(DataConfig(name=str(tmp_path), val_split=0.25, batch_size=4,
                                       transforms={"train": "cifar"}), 0, size=16)
    assert isinstance(cifar_like.loaders["train"], TensorLoader)  # crop + flip: batched tensor ops
    big = build_data(DataConfig(name=str(tmp_path), val_split=0.25, batch_size=4, cache_mb=0), 0, size=16)
    assert all(isinstance(loader, FileLoader) and loader.images is None for loader in big.loaders.values())
    # Cached and streamed evaluation see exactly the same pixels.
    cached = torch.cat([x for x, _ in small.loaders["val"]])
    streamed = torch.cat([x for x, _ in big.loaders["val"]])
    assert torch.equal(cached, streamed)
    assert small.prep == big.prep


def test_normalize_modes(tmp_path: Path) -> None:
    cfg = DataConfig(name="synthetic", args=SYNTH)
    auto = build_data(cfg, 0).prep
    assert auto.mean == build_data(DataConfig(name="synthetic", args=SYNTH, normalize="dataset"), 0).prep.mean
    assert build_data(DataConfig(name="synthetic", args=SYNTH, normalize="none"), 0).prep.std == (1.0, 1.0, 1.0)
    assert build_data(DataConfig(name="synthetic", args=SYNTH, normalize="imagenet"), 0).prep.mean == (
        0.485, 0.456, 0.406)
    given = build_data(DataConfig(name="synthetic", args=SYNTH, transforms={
        "train": [{"name": "ToTensor"}, {"name": "Normalize", "mean": [0.5] * 3, "std": [0.25] * 3}]}), 0).prep
    assert (given.mean, given.std) == ((0.5,) * 3, (0.25,) * 3)
    assert build_data(cfg, 0, model_stats=((0.1,) * 3, (0.2,) * 3)).prep.mean == (0.1,) * 3
    _folder(tmp_path / "f", size=(8, 8))
    folder = build_data(DataConfig(name=str(tmp_path / "f"), val_split=0.0), 0).prep
    assert folder.mean[0] == pytest.approx(120 / 255, abs=0.01) and folder.mean[1] == pytest.approx(20 / 255, abs=0.01)


def test_channels_and_size_follow_the_model(tmp_path: Path) -> None:
    bundle = build_data(DataConfig(name="synthetic", args={**SYNTH, "channels": 1}), 0, channels=3, size=24)
    images, _ = next(iter(bundle.loaders["val"]))
    assert images.shape[1:] == (3, 24, 24) and torch.equal(images[:, 0], images[:, 2])
    assert bundle.prep.mean[0] == bundle.prep.mean[2]


def test_transform_config_is_checked_against_the_model_input() -> None:
    cfg = DataConfig(name="synthetic", args=SYNTH, transforms={"train": [{"name": "CenterCrop", "size": 12}]})
    with pytest.raises(ConfigError, match=r"data.transforms.train make 3x12x12 images but the model takes 3x16x16"):
        build_data(cfg, 0)
    with pytest.raises(ConfigError, match="ColorJitter is random; evaluation transforms must be deterministic"):
        build_data(DataConfig(name="synthetic", args=SYNTH, transforms={"eval": ["ColorJitter"]}), 0)
    with pytest.raises(ConfigError, match="make 1x16x16 images"):
        build_data(DataConfig(name="synthetic", args=SYNTH, transforms={"train": [{"name": "Grayscale"}]}), 0)


def test_yaml_transforms_and_test_time_crops(tmp_path: Path) -> None:
    cfg = load_config({"data": {"name": "synthetic", "args": SYNTH, "eval_batch_size": 4, "transforms": {
        "train": "cifar",
        "eval": [{"name": "Resize", "size": [20, 20]}, {"name": "FiveCrop", "size": 16}]}}}).data
    bundle = build_data(cfg, 0)
    assert [s["name"] for s in bundle.train_transforms] == ["Resize", "RandomCrop", "RandomHorizontalFlip"]
    images, labels = next(iter(bundle.loaders["val"]))
    assert images.shape == (4, 5, 3, 16, 16) and labels.shape == (4,)  # [B, crops, C, H, W]
    assert bundle.prep.crops == 5


def test_evaluating_with_a_checkpoints_preprocessing_uses_eval_transforms_everywhere() -> None:
    prep = Preprocessing(3, 16, (0.5,) * 3, (0.5,) * 3, [{"name": "Resize", "size": [16, 16]}])
    bundle = build_data(DataConfig(name="synthetic", args=SYNTH), 0, prep=prep, splits=("train",))
    first = torch.cat([x for x, _ in bundle.loaders["train"]])
    again = torch.cat([x for x, _ in bundle.loaders["train"]])
    assert torch.equal(first, again) and torch.equal(first, bundle.source.splits["train"].images)
    assert bundle.prep == prep


def test_unknown_sources_say_what_exists(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="did you mean cifar10"):
        load_source(DataConfig(name="cifar1O"), 0)
    with pytest.raises(DataError, match="does not exist"):
        load_source(DataConfig(name=str(tmp_path / "nope")), 0)
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="not a manifest"):
        load_source(DataConfig(name=str(tmp_path / "file.bin")), 0)


def test_config_range_checks() -> None:
    for key, value in (("normalize", "zscore"), ("bad_images", "ignore"), ("cache", "disk"), ("max_pixels", 0)):
        with pytest.raises(ConfigError, match=f"data.{key}"):
            load_config({"data": {key: value}})
