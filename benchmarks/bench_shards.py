"""Sharded streaming: img/s per epoch and peak memory of torchvision ``ImageFolder`` + ``DataLoader``, visiontrain
streaming the folder (``cache: off``), and visiontrain from ``data pack`` shards (as packed, and packed with
``--resize-to``), with 0 and 2 DataLoader workers, on a generated set of JPEG photos.

The photos are crops of scikit-learn's two sample photographs (china.jpg, flower.jpg), rescaled to varied sizes
around 500x375 and re-encoded at quality 85-95 (generated textures when scikit-learn is missing). Every loader
config runs in its own process (so its peak memory — the PSS of the process and its workers together, sampled
every 50 ms — is its own); configs are interleaved and repeated, and each row reports the median img/s of its last
epoch, the CPU seconds of the whole process tree and the load average.

    python benchmarks/bench_shards.py                      # 5,000 photos, 0 and 2 workers, 2 epochs
    python benchmarks/bench_shards.py --images 50000       # the scaling row (long on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 10
KINDS = ("imagefolder", "vt-folder", "vt-shards", "vt-shards-resized")


def _photo(i: int, root: str) -> None:
    rng = np.random.default_rng(i)
    base = _BASES[i % len(_BASES)]
    w, h = int(rng.integers(420, 580)), int(rng.integers(320, 430))
    crop_w, crop_h = int(rng.integers(260, base.width)), int(rng.integers(200, base.height))
    x, y = int(rng.integers(0, base.width - crop_w + 1)), int(rng.integers(0, base.height - crop_h + 1))
    image = base.crop((x, y, x + crop_w, y + crop_h)).resize((w, h), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    folder = Path(root) / f"c{i % CLASSES}"
    image.save(folder / f"{i:06d}.jpg", quality=int(rng.integers(85, 96)))


def _bases() -> list[Image.Image]:
    try:
        from sklearn.datasets import load_sample_images

        return [Image.fromarray(a) for a in load_sample_images().images]
    except ImportError:  # generated textures: gradients and noise
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:427, 0:640]
        return [Image.fromarray(np.clip(np.stack([127 + 100 * np.sin(xx / (30 + 17 * k) + yy / (50 + k))
                                                  for k in range(3)], -1) + rng.normal(0, 14, (427, 640, 3)),
                                        0, 255).astype(np.uint8)) for _ in range(2)]


_BASES = _bases()


def make_photos(root: Path, count: int) -> None:
    for k in range(CLASSES):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
    with Pool(min(2, os.cpu_count() or 1)) as pool:
        pool.starmap(_photo, [(i, str(root)) for i in range(count)], chunksize=256)


def _tree_rss(pid: int) -> int:
    """PSS of the process and its workers: forked workers share the parent's pages, which RSS would count in
    every one of them (torch alone is ~400 MiB of them)."""
    import psutil

    total = 0
    try:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except psutil.Error:
                continue
    except psutil.Error:
        return 0
    return total


def measure(kind: str, data: str, workers: int, epochs: int, size: int, batch: int) -> dict:
    """One loader config in this process: img/s per epoch and the peak RSS of this process and its workers."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from visiontrain.config import DataConfig
    from visiontrain.data import build_data

    torch.set_num_threads(1)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _tree_rss(os.getpid()))

    threading.Thread(target=sample, daemon=True).start()
    if kind == "imagefolder":
        aug = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.35, 1.0)),
                                  transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
        loader = DataLoader(datasets.ImageFolder(data, transform=aug), batch_size=batch, shuffle=True,
                            num_workers=workers, persistent_workers=workers > 0)
    else:
        cfg = DataConfig(name=data, batch_size=batch, val_split=0.0, workers=workers, cache="off",
                         normalize="imagenet", transforms={"train": "photos"})
        loader = build_data(cfg, 0, size=size, splits=("train",)).loaders["train"]
    rates = []
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        start, seen = time.perf_counter(), 0
        for images, _labels in loader:
            seen += len(images)
        rates.append(seen / (time.perf_counter() - start))
    done.set()
    return {"rates": rates, "peak_rss": max(peak[0], _tree_rss(os.getpid()))}


def run_one(kind: str, data: str, args: argparse.Namespace, workers: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    argv = [sys.executable, __file__, "--measure", kind, "--data", data, "--workers", str(workers),
            "--epochs", str(args.epochs), "--size", str(args.size), "--batch", str(args.batch)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["load"] = os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repeats of every config (median)")
    parser.add_argument("--size", type=int, default=128, help="model input side")
    parser.add_argument("--resize-to", type=int, default=146, help="--resize-to of the resized pack [146: the "
                        "input side x 8/7, what RandomResizedCrop needs]")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--work", help="folder for the photos and shards (kept: reused by a later run)")
    parser.add_argument("--measure", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.data, args.workers[0], args.epochs, args.size, args.batch)))
        return
    with tempfile.TemporaryDirectory(prefix="vt-shards-") as tmp:
        work = Path(args.work or tmp) / f"photos{args.images}"
        report(work, args)


def report(work: Path, args: argparse.Namespace) -> None:
    from visiontrain.config import DataConfig
    from visiontrain.data.pack import pack

    photos, shards, resized = work / "photos", work / "shards", work / f"shards{args.resize_to}"
    if not photos.exists():
        start = time.perf_counter()
        make_photos(photos, args.images)
        print(f"# made {args.images:,} photos in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    for out, resize in ((shards, None), (resized, args.resize_to)):
        if not (out / "index.json").exists():
            start, cpu = time.perf_counter(), time.process_time()
            index = pack(DataConfig(name=str(photos), workers=2), 0, out, resize_to=resize)
            total = sum(s["bytes"] for s in index["splits"]["train"]["shards"])
            print(f"# packed {out.name} (resize_to {resize}): {time.perf_counter() - start:.0f}s wall, "
                  f"{total / 2**20:.0f} MiB", file=sys.stderr)
    data = {"imagefolder": str(photos), "vt-folder": str(photos), "vt-shards": f"shards:{shards}",
            "vt-shards-resized": f"shards:{resized}"}
    results: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.repeat):
        for workers in args.workers:
            for kind in args.kinds:
                results.setdefault((kind, workers), []).append(run_one(kind, data[kind], args, workers))
    print(f"\n{args.images:,} photos, input {args.size}, batch {args.batch}, {args.epochs} epochs, "
          f"median of {args.repeat}; ratio: last epoch vs ImageFolder at the same workers")
    print("| loader | workers | img/s epoch 1 | img/s last | ratio | peak PSS MiB | CPU s | load |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (kind, workers), runs in results.items():
        first = statistics.median(r["rates"][0] for r in runs)
        last = statistics.median(r["rates"][-1] for r in runs)
        base = results.get(("imagefolder", workers))
        ratio = last / statistics.median(r["rates"][-1] for r in base) if base else float("nan")
        rss = statistics.median(r["peak_rss"] for r in runs) / 2**20
        cpu = statistics.median(r["cpu_s"] for r in runs)
        load = statistics.median(r["load"] for r in runs)
        print(f"| {kind} | {workers} | {first:,.0f} | {last:,.0f} | {ratio:.2f}x | {rss:,.0f} | {cpu:.1f} | "
              f"{load:.1f} |")


if __name__ == "__main__":
    main()
