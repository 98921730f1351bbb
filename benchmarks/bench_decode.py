"""JPEG decoding cost: visiontrain's guarded per-image decoder (Pillow, what DataLoader workers run) against
:func:`visiontrain.data.decode.decode_batch` (header probe + one ``torchvision.io.decode_jpeg`` call per batch: nvJPEG
on a GPU), on the same generated photo-like JPEGs, interleaved in one run. Reports the medians over the repeats of
CPU milliseconds (``time.process_time``, the whole process) and wall milliseconds per image.

    python benchmarks/bench_decode.py                    # CPU: both ways on the CPU
    python benchmarks/bench_decode.py --device cuda      # the batch way on the GPU (synchronised per batch)
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from PIL import Image

from visiontrain.data.decode import batch_decoder_works, decode_batch
from visiontrain.data.images import image_to_tensor, open_image


def make_jpegs(count: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (gradients and noise, quality 90): a random-noise JPEG would decode unrealistically slowly."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for i in range(count):
        base = np.stack([(x * 255 / width + 7 * i) % 256, (y * 255 / height) % 256, ((x + y) * 0.3 + i) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def per_image(raws: list[bytes], batch: int, device: torch.device) -> None:
    for raw in raws:
        image_to_tensor(open_image(raw, 3)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()


def batched(raws: list[bytes], batch: int, device: torch.device) -> None:
    for start in range(0, len(raws), batch):
        decode_batch(raws[start:start + batch], 3, device)
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(ways: dict[str, Callable], raws: list[bytes], batch: int, device: torch.device,
            repeats: int) -> dict[str, tuple[float, float]]:
    """Median (CPU ms, wall ms) per image of each way, the ways interleaved within each repeat."""
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            cpu, wall = time.process_time(), time.perf_counter()
            way(raws, batch, device)
            seen[name].append(((time.process_time() - cpu) * 1e3 / len(raws),
                               (time.perf_counter() - wall) * 1e3 / len(raws)))
    return {name: (statistics.median(c for c, _ in rows), statistics.median(w for _, w in rows))
            for name, rows in seen.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the photos [default: 500x375]")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    if not batch_decoder_works(device):
        sys.exit(f"decode_jpeg does not decode on {device} here")
    width, height = (int(v) for v in args.size.split("x"))
    raws = make_jpegs(args.images, width, height)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {Image.__version__} | "
          f"{args.images} JPEGs {width}x{height}, batch {args.batch}, device {device}, {os.cpu_count()} CPUs, "
          f"load {load:.1f}, 1 torch thread, medians of {args.repeats}")
    ways = {"guarded per image (Pillow), CPU": per_image,
            f"decode_batch (probe + decode_jpeg) on {device.type}": batched}
    base = None
    for name, (cpu, wall) in measure(ways, raws, args.batch, device, args.repeats).items():
        base = base or cpu
        print(f"| {name} | {cpu:.2f} | {wall:.2f} | {base / cpu:.1f}x |")


if __name__ == "__main__":
    main()
