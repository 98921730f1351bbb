"""Loaders: seeded order, resumable mid-epoch, augmentation independent of the worker count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from visiontrain.config import DataConfig
from visiontrain.data import build_data
from visiontrain.data.batching import epoch_order
from visiontrain.data.loaders import FileLoader, Normalizer, TensorLoader

SYNTH = {"train": 50, "val": 8, "test": 8, "size": 16}


def _batches(loader: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]  # type: ignore[attr-defined]


def _same(a: list, b: list) -> bool:
    pairs = zip(a, b, strict=False)
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in pairs)


def test_tensor_loader_order_depends_on_seed_and_epoch_only() -> None:
    bundle = build_data(DataConfig(name="synthetic", args=SYNTH, val_split=0.0, batch_size=16), seed=3)
    loader = bundle.loaders["train"]
    assert isinstance(loader, TensorLoader) and loader.num_samples == 50 and loader.batch_size == 16
    loader.set_epoch(1)
    first = _batches(loader)
    loader.set_epoch(1)
    assert _same(first, _batches(loader))  # augmentation too: seeded by (seed, epoch, batch)
    loader.set_epoch(2)
    assert not _same(first, _batches(loader))
    labels = torch.cat([y for _, y in first])
    assert torch.equal(labels, bundle.source.splits["train"].labels[loader.order(1)])
    assert torch.equal(loader.order(1), epoch_order(50, True, 3, 1))


def test_tensor_loader_resumes_mid_epoch_with_the_same_batches() -> None:
    bundle = build_data(DataConfig(name="synthetic", args=SYNTH, val_split=0.0, batch_size=8), seed=0)
    loader = bundle.loaders["train"]
    loader.set_epoch(4)
    full = _batches(loader)
    loader.set_epoch(4, start_batch=3)
    assert _same(full[3:], _batches(loader))
    assert len(_batches(loader)) == len(full)  # the skip applied to one pass only


def _folder(root: Path) -> Path:
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(7):
            Image.new("RGB", (24 + i, 20), (40 * c + i, 90, 150)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("workers", [2])
def test_file_loader_gives_the_same_stream_for_any_worker_count(tmp_path: Path, workers: int) -> None:
    root = _folder(tmp_path / "d")
    cfg = {"name": str(root), "val_split": 0.0, "batch_size": 5, "cache": "off"}
    zero = build_data(DataConfig(**cfg, workers=0), seed=1, size=16).loaders["train"]
    many = build_data(DataConfig(**cfg, workers=workers), seed=1, size=16).loaders["train"]
    assert isinstance(zero, FileLoader) and isinstance(many, FileLoader)
    zero.set_epoch(2)
    many.set_epoch(2)
    reference = _batches(zero)
    assert _same(reference, _batches(many))
    labels = torch.cat([y for _, y in reference])
    assert torch.equal(labels, zero.dataset.labels[zero.order(2)])
    many.set_epoch(2, start_batch=2)
    assert _same(reference[2:], _batches(many))
    zero.set_epoch(3)
    assert not _same(reference, _batches(zero))


def test_normalizer_on_batches_and_crops() -> None:
    norm = Normalizer((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = norm(x)
    assert torch.allclose(out[:, 0], torch.tensor(1.0)) and torch.allclose(out[:, 1], torch.tensor(3.0))
    assert torch.allclose(out[:, 2], torch.tensor(1.0))
    crops = norm(torch.zeros(2, 5, 3, 4, 4, dtype=torch.uint8))  # [B, crops, C, H, W] from FiveCrop
    assert crops.shape == (2, 5, 3, 4, 4) and torch.allclose(crops[:, :, 0], torch.tensor(-1.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_in_memory_batches_are_cut_and_augmented_on_the_gpu() -> None:
    bundle = build_data(DataConfig(name="synthetic", args=SYNTH, batch_size=16,
                                   transforms={"train": "cifar"}), seed=0, device="cuda")
    images, labels = next(iter(bundle.loaders["train"]))
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.uint8
    cpu = build_data(DataConfig(name="synthetic", args=SYNTH, batch_size=16, transforms={"train": "cifar"}), seed=0)
    _, cpu_labels = next(iter(cpu.loaders["train"]))
    assert torch.equal(labels.cpu(), cpu_labels)  # same order; the random draws come from the device's generator


def test_per_image_augmentation_of_cached_images_runs_in_workers_with_the_same_stream(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    cfg = {"name": str(root), "val_split": 0.0, "batch_size": 5, "transforms": {"train": "photos"}}
    zero = build_data(DataConfig(**cfg, workers=0), seed=1, size=16)
    many = build_data(DataConfig(**cfg, workers=2), seed=1, size=16)
    for bundle in (zero, many):
        loader = bundle.loaders["train"]
        assert isinstance(loader, FileLoader) and loader.dataset.paths == []  # from memory: no files read
        loader.set_epoch(1)
    batches = _batches(zero.loaders["train"])
    assert _same(batches, _batches(many.loaders["train"]))
    assert batches[0][0].shape == (5, 3, 16, 16)
