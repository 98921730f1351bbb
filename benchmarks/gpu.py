"""The GPU figures of docs/benchmarks.md in one go (about 3 minutes on one H200, measured), printed as one table.

    python benchmarks/gpu.py --data-dir data     # on a machine with CUDA; MNIST must be in data/MNIST/raw
    python benchmarks/gpu.py --tiny              # tiny sizes on the CPU (automatic without CUDA): a smoke run

Rows, each beside its peer in the same run:

* ``mnist`` — ``visiontrain train --recipe fast --device cuda`` as a fresh process: seconds of training
  (``summary.json``'s ``time.train_s``) and test accuracy; the goal is >= 99.0% in <= 1 s of training (anchor:
  0.76 s on a GTX 1660 Ti). Needs the real MNIST files (the GPU machine may have no network: prepare them
  elsewhere with ``python -c "from visiontrain.data.mnist import prepare_mnist; prepare_mnist('data')"``).
* ``cifar`` — 50,000 random images written in CIFAR-10's on-disk format (``cifar-10-batches-py`` pickles):
  ``visiontrain train --recipe cifar_gpu`` against an airbench-style loop written here (the whole set on the GPU
  as uint8, flips and 2-px translations of the whole set per epoch, the same network, SGD Nesterov one-cycle,
  label smoothing 0.2, bf16 autocast, channels_last); median img/s of the epochs after the first, goal ratio
  >= 0.9.
* ``resnet50`` — ResNet-50 at 224 px training img/s on synthetic images through visiontrain (bf16,
  channels_last, torch.compile unless ``--no-compile``), beside a bare loop with the same settings on random
  tensors; goal >= 4,000 img/s (anchor ~2,470 on an A100 with AMP).
* ``jpeg`` — ``torchvision.io.decode_jpeg`` of the same 500x375 JPEGs on the GPU (``device='cuda'``, batched)
  and on the CPU (one thread, and the machine's threads), img/s.

Each row also says the process's CPU-seconds (children included) and the load average, so that a figure means
something on a shared machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from visiontrain.testing import idx_bytes, write_cifar

Row = dict[str, str]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def cpu_seconds() -> float:
    """CPU-seconds of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_cli(args: list[str], out: Path, name: str) -> dict:
    """``visiontrain train ARGS`` in a fresh process; its summary.json."""
    cmd = [sys.executable, "-m", "visiontrain", "train", *args, "--out", str(out), "--name", name, "--overwrite",
           "--plots", "off", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / name / "summary.json").read_text(encoding="utf-8"))


# --- MNIST: time to 99% ----------------------------------------------------------------------------------------

def mnist_row(args: argparse.Namespace, device: torch.device, out: Path) -> list[Row]:
    root = Path(args.data_dir)
    if args.tiny:  # random digits in MNIST's format: the path runs, the accuracy means nothing
        root = out / "mnist"
        rng = np.random.default_rng(0)
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for prefix, n in (("train", 600), ("t10k", 100)):
            (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(rng.integers(0, 256, (n, 28, 28))))
            (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(rng.integers(0, 10, n)))
    if not (root / "MNIST" / "raw").is_dir():
        return [{"what": "MNIST `--recipe fast` time to 99%", "value": "skipped",
                 "detail": f"no MNIST in {root}/MNIST/raw (see --data-dir)", "target": "<= 1 s, >= 99.0%"}]
    summary = train_cli(["--recipe", "fast", "--data", "mnist", "--data-dir", str(root), "--device", device.type,
                         "--no-download", *(["--threads", "1"] if args.tiny else [])], out, "mnist-fast")
    seconds, accuracy = summary["time"]["train_s"], summary["test"]["accuracy"]
    met = "met" if seconds <= 1.0 and accuracy >= 0.99 else "MISSED"
    return [{"what": f"MNIST `--recipe fast` on {summary['device']} ({summary['precision']})",
             "value": f"{seconds:.2f} s", "detail": f"test {100 * accuracy:.2f}%, {summary['wall_time_s']:.1f} s wall",
             "target": "(tiny: no target)" if args.tiny else f"<= 1 s, >= 99.0%: {met}"}]


# --- CIFAR-shaped: visiontrain's recipe vs an airbench-style loop ----------------------------------------------

class AirbenchNet(nn.Sequential):
    """airbench's network written out here (the reference does not borrow visiontrain's): 2x2 stem conv, three
    groups conv-pool-BN-GELU-conv-BN-GELU, global max-pool, bias-free linear scaled 1/9."""

    def __init__(self, widths: tuple[int, ...] = (64, 256, 256), classes: int = 10) -> None:
        layers: list[nn.Module] = [nn.Conv2d(3, 24, 2), nn.GELU()]
        cin = 24
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(w), nn.GELU(),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.GELU()]
            cin = w
        super().__init__(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(cin, classes, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / 9


def read_cifar(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batches of cifar-10-batches-py as uint8 [N,3,32,32] and labels."""
    images, labels = [], []
    for i in range(1, 6):
        with open(root / "cifar-10-batches-py" / f"data_batch_{i}", "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels += batch[b"labels"]
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels)


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """airbench's per-epoch augmentation of the whole set: random flips and translations of up to 2 px."""
    n = len(images)
    flip = torch.rand(n, device=images.device, generator=gen) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = F.pad(images, (2, 2, 2, 2))
    dy, dx = (torch.randint(0, 5, (n,), device=images.device, generator=gen) for _ in range(2))
    base = torch.arange(32, device=images.device)
    rows, cols = (dy[:, None] + base)[:, None, :, None], (dx[:, None] + base)[:, None, None, :]
    return padded[torch.arange(n, device=images.device)[:, None, None, None],
                  torch.arange(3, device=images.device)[None, :, None, None], rows, cols]


def reference_cifar(root: Path, device: torch.device, epochs: int, batch: int, lr: float, widths: tuple[int, ...],
                    bf16: bool) -> list[float]:
    """The airbench-style loop; img/s of each epoch."""
    torch.manual_seed(0)
    images, labels = read_cifar(root)
    images, labels = images.to(device), labels.to(device)
    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1) * 255
    model = AirbenchNet(widths).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * -(-len(images) // batch)
    # visiontrain's one-cycle (engine/optim.py): 25% warm-up, each phase at least two steps; constant below 4
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=min(max(0.25, 2 / steps), 1 - 2 / steps)) \
        if steps >= 4 else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    gen = torch.Generator(device=device).manual_seed(0)
    rates = []
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        data = augment(images, gen)
        order = torch.randperm(len(images), device=device, generator=gen)
        model.train()
        for idx in order.split(batch):
            x = ((data[idx].float() - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        sync(device)
        rates.append(len(images) / (time.perf_counter() - start))
    return rates


def steady(rates: list[float]) -> float:
    """Median img/s of the epochs after the first (which pays CUDA's and cuDNN's start-up): one epoch of 49 steps
    lasts ~0.25 s on an H200, and the last epoch alone swung 0.81x-0.98x between two runs of this script."""
    return statistics.median(rates[1:] or rates)


def epoch_rates(run_dir: Path) -> list[float]:
    """``train/img_per_s`` of each epoch of a run, from its metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [row["train/img_per_s"] for row in rows if row.get("kind") == "epoch"]


def cifar_rows(args: argparse.Namespace, device: torch.device, out: Path) -> list[Row]:
    root = out / "cifar"
    per_file = 40 if args.tiny else 10000
    write_cifar(root, per_file=per_file, seed=0)
    epochs = 1 if args.tiny else args.cifar_epochs
    widths = (8, 16, 16) if args.tiny else (64, 256, 256)
    from visiontrain.config.recipes import resolve

    recipe = resolve("cifar_gpu")
    batch, lr = (64, recipe["optim.lr"]) if args.tiny else (recipe["data.batch_size"], recipe["optim.lr"])
    bf16 = device.type == "cuda"
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    flags = ["--recipe", "cifar_gpu", "--data", "cifar10", "--data-dir", str(root), "--device", device.type,
             "--no-download", "--epochs", str(epochs), "--batch-size", str(batch), "--set", "data.val_split=0",
             "--set", f"model.args.widths={list(widths)}"] + (["--threads", "1"] if args.tiny else [])
    summary = train_cli(flags, out, "cifar-gpu")
    ours_epochs = epoch_rates(out / "cifar-gpu")
    ref_epochs = reference_cifar(root, device, epochs, batch, lr, widths, bf16)
    ours, ref = steady(ours_epochs), steady(ref_epochs)
    ratio = ours / ref
    target = "(tiny: no target)" if args.tiny else f">= 0.9x: {'met' if ratio >= 0.9 else 'MISSED'}"
    cost = f"{cpu_seconds() - cpu0:.0f} CPU-s, {time.perf_counter() - wall0:.0f} s wall for both"
    n = 5 * per_file
    params = sum(p.numel() for p in AirbenchNet(widths).parameters())
    if params != summary["model"]["parameters"]:  # the same network, or the ratio compares nothing
        raise RuntimeError(f"the reference has {params:,} parameters, visiontrain's airbench_net "
                           f"{summary['model']['parameters']:,}")
    return [
        {"what": "CIFAR-shaped img/s: airbench-style loop (reference)", "value": f"{ref:,.0f}",
         "detail": f"{n:,} images, median of epochs {f'2-{epochs}' if epochs > 1 else '1'} "
                   f"(each: {', '.join(f'{r:,.0f}' for r in ref_epochs)}), "
                   f"batch {batch}", "target": ""},
        {"what": "CIFAR-shaped img/s: `visiontrain --recipe cifar_gpu`", "value": f"{ours:,.0f}",
         "detail": f"÷ reference = {ratio:.2f}x (each: {', '.join(f'{r:,.0f}' for r in ours_epochs)}); "
                   f"test {100 * summary['test']['accuracy']:.1f}% (random pixels); "
                   f"{cost}", "target": target},
    ]


# --- ResNet-50 at 224 px ---------------------------------------------------------------------------------------

def bare_resnet(device: torch.device, name: str, side: int, batch: int, steps: int, compile_: bool,
                bf16: bool) -> float:
    """torchvision's model on random tensors already on the device: img/s of the steps after two warm-up ones."""
    model = getattr(torchvision.models, name)(num_classes=10).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step_model = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    start = 0.0
    for i in range(steps + 2):
        if i == 2:
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(step_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def resnet_rows(args: argparse.Namespace, device: torch.device, out: Path) -> list[Row]:
    import visiontrain

    name, side, images, batch = ("resnet18", 32, 64, 16) if args.tiny else ("resnet50", 224, 6144, 256)
    compile_ = args.compile and device.type == "cuda"
    bf16 = device.type == "cuda"
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    run = visiontrain.train({"data": {"name": "synthetic", "args": {"size": side, "train": images, "val": batch,
                                                                    "test": batch}},
                             "model": name, "batch_size": batch, "epochs": 1 if args.tiny else 3,
                             "precision": "bf16" if bf16 else "32", "train.channels_last": True,
                             "train.compile": compile_, "device": device.type, "out": str(out), "name": name,
                             "plots": False, **({"threads": 1} if args.tiny else {})}, quiet=True, overwrite=True)
    ours = run.summary["train"]["img_per_s"]
    bare = bare_resnet(device, name, side, batch, 4 if args.tiny else 30, compile_, bf16)
    settings = f"{'bf16' if bf16 else 'fp32'}, channels_last{', compiled' if compile_ else ''}, batch {batch}"
    cost = f"{cpu_seconds() - cpu0:.0f} CPU-s, {time.perf_counter() - wall0:.0f} s wall for both"
    return [
        {"what": f"{name} {side} px training img/s: bare loop, random tensors", "value": f"{bare:,.0f}",
         "detail": settings, "target": ""},
        {"what": f"{name} {side} px training img/s: visiontrain", "value": f"{ours:,.0f}",
         "detail": f"synthetic images, last epoch; ÷ bare = {ours / bare:.2f}x; {cost}",
         "target": f">= 4,000: {'met' if ours >= 4000 else 'MISSED'}" if not args.tiny else "(tiny: no target)"},
    ]


# --- JPEG decoding ---------------------------------------------------------------------------------------------

def jpeg_files(count: int, width: int, height: int) -> list[torch.Tensor]:
    """``count`` encoded JPEG photos (smooth gradients plus noise, quality 90) as uint8 byte tensors."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    files = []
    for _ in range(count):
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([127 + 100 * np.sin(xx / (40 + 20 * k) + phase[k] + yy / 90) for k in range(3)], -1)
        buf = io.BytesIO()
        Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)).save(buf, "JPEG",
                                                                                                      quality=90)
        files.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    return files


def decode_rate(files: list[torch.Tensor], decode: Callable[[], object], device: torch.device, reps: int) -> float:
    decode()  # warm-up (the GPU decoder's first call initialises nvJPEG)
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        decode()
    sync(device)
    return reps * len(files) / (time.perf_counter() - start)


def jpeg_rows(args: argparse.Namespace, device: torch.device, out: Path) -> list[Row]:
    from torchvision.io import decode_jpeg

    files = jpeg_files(16 if args.tiny else 512, 500, 375)
    reps = 1 if args.tiny else 3
    threads = torch.get_num_threads()
    rows = []
    torch.set_num_threads(1)
    try:
        one = decode_rate(files, lambda: [decode_jpeg(f) for f in files], torch.device("cpu"), reps)
    finally:
        torch.set_num_threads(threads)
    rows.append({"what": "JPEG decode img/s, CPU (`decode_jpeg`, 1 thread)", "value": f"{one:,.0f}",
                 "detail": f"{len(files)} photos 500x375, quality 90", "target": ""})
    if device.type == "cuda":
        gpu = decode_rate(files, lambda: decode_jpeg(files, device="cuda"), device, reps)
        rows.append({"what": "JPEG decode img/s, GPU (`decode_jpeg(device='cuda')`, batched)", "value": f"{gpu:,.0f}",
                     "detail": f"÷ CPU 1 thread = {gpu / one:.1f}x; ÷ {os.cpu_count()} CPU threads (ideal) = "
                               f"{gpu / (one * (os.cpu_count() or 1)):.1f}x", "target": ""})
    else:
        rows.append({"what": "JPEG decode img/s, GPU", "value": "n/a", "detail": "no CUDA device", "target": ""})
    return rows


SECTIONS = {"mnist": mnist_row, "cifar": cifar_rows, "resnet50": resnet_rows, "jpeg": jpeg_rows}


def print_table(rows: list[Row]) -> None:
    cols = ["what", "value", "detail", "target"]
    print("| " + " | ".join(cols) + " |")
    print("| " + " | ".join("---" for _ in cols) + " |")
    for row in rows:
        print("| " + " | ".join(row.get(c, "") for c in cols) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data", help="where MNIST is (data/MNIST/raw)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"any of {', '.join(SECTIONS)}")
    parser.add_argument("--cifar-epochs", type=int, default=4)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="no torch.compile for ResNet-50")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    args.tiny = args.tiny or not cuda
    if args.tiny:
        torch.set_num_threads(1)  # a smoke run, often on a busy machine: spinning threads would make it crawl
    device = torch.device("cuda" if cuda and not args.tiny else "cpu")
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU (tiny sizes)'} | {os.cpu_count()} CPUs | "
          f"torch {torch.__version__}, torchvision {torchvision.__version__} | load {load()}", flush=True)
    rows: list[Row] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vt-gpu-") as tmp:
        for name, section in SECTIONS.items():
            if name not in args.sections.split(","):
                continue
            try:
                rows += section(args, device, Path(tmp))
            except Exception as exc:  # one section failing must not hide the others' figures
                traceback.print_exc()
                rows.append({"what": name, "value": "FAILED", "detail": f"{type(exc).__name__}: "
                             f"{str(exc).splitlines()[-1] if str(exc) else ''}"[:300], "target": ""})
            print(f"  ({name} done after {time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    print()
    print_table(rows)
    print(f"\n# {time.perf_counter() - start:.0f} s wall, {cpu_seconds():.0f} CPU-s (with children), load {load()}")
    if any(row["value"] == "FAILED" for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
