"""Loader throughput: visiontrain's loaders vs the seeds' way (torchvision dataset + DataLoader, one PIL image
per sample through ``ToTensor``/``Normalize``), on the same data with the same augmentation, in the same run.

Two workloads, each timed as images/s over whole epochs, ending in normalized float batches on the device
(what a model consumes):

* CIFAR-10 (50,000 images in the real on-disk pickle format, random pixels): torchvision ``CIFAR10`` +
  ``DataLoader`` with RandomCrop(32, padding=4) + flip vs visiontrain's in-memory uint8 tensor loader.
* An image folder of JPEG photos (default 1,000 at 500x375, two classes): ``ImageFolder`` + ``DataLoader`` with
  RandomResizedCrop(224) + flip vs visiontrain streaming (``cache: off``) and cached in memory (``cache: auto``;
  its first epoch includes decoding everything once), and streaming with each batch's JPEGs decoded in the main
  process on the device (``decode: gpu``: nvJPEG on CUDA; ``decode_jpeg`` on the CPU otherwise).

    python benchmarks/bench_loader.py                 # CPU, both workloads (~3 min on 2 cores)
    python benchmarks/bench_loader.py --device cuda   # batches end on the GPU; in-memory data lives there
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from visiontrain.config import DataConfig
from visiontrain.data import build_data
from visiontrain.data.loaders import Normalizer
from visiontrain.testing import write_cifar

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def make_cifar(root: Path, seed: int = 0) -> None:
    """50k/10k random images written as cifar-10-batches-py (the format torchvision reads)."""
    write_cifar(root, per_file=10000, seed=seed)


class LocalCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR10 without its md5 check (the files here are generated, not the published ones)."""

    meta: ClassVar[dict] = {**datasets.CIFAR10.meta, "md5": None}

    def _check_integrity(self) -> bool:
        return True


def make_folder(root: Path, count: int, width: int = 500, height: int = 375, seed: int = 0) -> None:
    """``count`` JPEG photos (smooth gradients plus noise, quality 90) in two class folders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        cls = root / ("a" if i % 2 else "b")
        cls.mkdir(parents=True, exist_ok=True)
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([127 + 100 * np.sin(xx / (40 + 20 * k) + phase[k] + yy / 90) for k in range(3)], -1)
        noise = rng.normal(0, 12, base.shape)
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(cls / f"{i:05d}.jpg", quality=90)


def timed(batches: Iterable, to_input: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
          epochs: int) -> list[float]:
    """img/s of each epoch: every batch moved to the device and made model input, then synchronised."""
    rates = []
    for epoch in range(epochs):
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(epoch)
        start, seen = time.perf_counter(), 0
        for images, labels in batches:
            x = to_input(images.to(device, non_blocking=True))
            labels.to(device, non_blocking=True)
            seen += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return rates


def seeds_loader(dataset: torch.utils.data.Dataset, batch: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0)


def bench_cifar(root: Path, args: argparse.Namespace, device: torch.device) -> list[tuple[str, list[float]]]:
    make_cifar(root)
    aug = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                              transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    rows = []
    for workers in sorted({0, args.workers}):
        dataset = LocalCIFAR10(str(root), train=True, transform=aug)
        loader = seeds_loader(dataset, args.batch, workers, device)
        rows.append((f"torchvision CIFAR10 + DataLoader, PIL per image, {workers} workers",
                     timed(loader, lambda x: x, device, args.epochs)))
    start = time.perf_counter()
    bundle = build_data(DataConfig(name="cifar10", dir=str(root), batch_size=args.batch, val_split=0.0,
                                   transforms={"train": "cifar"}), 0, device=device)
    print(f"  (visiontrain cifar10 load: {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    norm = Normalizer(MEAN, STD)
    rows.append((f"visiontrain in-memory uint8, batched crop+flip on {device.type}",
                 timed(bundle.loaders["train"], norm, device, args.epochs)))
    return rows


def bench_folder(root: Path, args: argparse.Namespace, device: torch.device) -> list[tuple[str, list[float]]]:
    make_folder(root, args.images)
    size = args.size
    aug = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.35, 1.0)), transforms.RandomHorizontalFlip(),
                              transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    rows = []
    loader = seeds_loader(datasets.ImageFolder(str(root), transform=aug), args.batch, args.workers, device)
    rows.append((f"torchvision ImageFolder + DataLoader, PIL per image, {args.workers} workers",
                 timed(loader, lambda x: x, device, args.epochs)))
    norm = Normalizer(MEAN, STD)
    for cache, decode, label in (
            ("off", "cpu", f"visiontrain streaming, {args.workers} workers"),
            ("off", "gpu", f"visiontrain streaming, {args.workers} workers read, batches decoded on {device.type} "
                           "(decode: gpu)"),
            ("memory", "cpu", "visiontrain cached in memory (1st epoch includes decoding)")):
        cfg = DataConfig(name=str(root), batch_size=args.batch, val_split=0.0, workers=args.workers, cache=cache,
                         normalize="imagenet", transforms={"train": "photos"}, decode=decode)
        start = time.perf_counter()
        bundle = build_data(cfg, 0, size=size, device=device, pin_memory=device.type == "cuda")
        load = time.perf_counter() - start
        rates = timed(bundle.loaders["train"], norm, device, args.epochs)
        n = bundle.loaders["train"].num_samples
        rates[0] = n / (n / rates[0] + load)  # the one-time decode counts against the first epoch
        rows.append((label, rates))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--images", type=int, default=1000, help="photos in the folder workload")
    parser.add_argument("--size", type=int, default=224, help="input side for the folder workload")
    parser.add_argument("--only", choices=["cifar", "folder"], help="run one workload")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process [default: 1: "
                        "DataLoader workers use one each, and busy machines make small multi-threaded ops crawl]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# {datetime.date.today()} | {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs | "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {Image.__version__} | "
          f"device {device}, batch {args.batch}, {args.epochs} epochs, {args.threads} main thread(s)")
    with tempfile.TemporaryDirectory(prefix="vt-bench-") as tmp:
        for name, bench in (("cifar", bench_cifar), ("folder", bench_folder)):
            if args.only not in (None, name):
                continue
            rows = bench(Path(tmp) / name, args, device)
            base = max(r[1][-1] for r in rows if r[0].startswith("torchvision"))
            print(f"\n## {name}: img/s per epoch (ratio: last epoch vs the best torchvision way)")
            for label, rates in rows:
                epochs = ", ".join(f"{r:,.0f}" for r in rates)
                print(f"| {label} | {epochs} | {rates[-1] / base:.1f}x |")


if __name__ == "__main__":
    main()
