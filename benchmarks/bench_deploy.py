"""CPU inference speed of the deployment formats, each beside the others, in one run.

    python benchmarks/bench_deploy.py [--reps 30] [--batch-reps 5] [--out docs_table.md]

Two models, each trained briefly by visiontrain on the synthetic shapes (so every export path — calibration,
accuracy check — runs exactly as a user's would):

* ``small_cnn`` at 32 px (the built-in small net; 3 epochs, ~100% test accuracy);
* ``resnet18`` at 224 px (torchvision's, random init, 1 epoch on 256 images: its accuracy means little, its speed
  is resnet18's at 224 px).

Each is run as PyTorch eager (the checkpoint, ``torch.no_grad``), ONNX fp32 and ONNX int8 (onnxruntime), and
OpenVINO fp32 and int8 (the OpenVINO runtime), each with ``--threads`` threads (1 by default: on a shared
machine a 2-thread torch ran 2-5x slower than a 1-thread one, its threads waiting on each other). Latency:
batch 1, ``--reps`` calls, p50 and p99. Throughput: batch 32, images/s over ``--batch-reps`` batches. The
engines are timed one after another in two rounds (the second in reverse order, so slow drifts of the
machine's load fall on every row alike; the load average is printed with the table).
Accuracy: the held-out (test) split, and top-1 agreement with PyTorch's fp32 predictions.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import visiontrain
from visiontrain.use.export import export, load_exported
from visiontrain.use.export.quantize import accuracy_check

MODELS = {
    "small_cnn 32 px": {"model": "small_cnn", "data": {"name": "synthetic", "args": {}}, "epochs": 3},
    "resnet18 224 px": {"model": "resnet18", "epochs": 1, "batch_size": 32,
                        "data": {"name": "synthetic", "args": {"size": 224, "train": 256, "val": 64, "test": 128}}},
}
ENGINES = ("PyTorch eager", "ONNX fp32", "ONNX int8", "OpenVINO fp32", "OpenVINO int8")
Forward = Callable[[torch.Tensor], torch.Tensor]


def train(name: str, spec: dict, out: Path) -> Path:
    config = {"model": spec["model"], "data": spec["data"], "epochs": spec["epochs"], "out": str(out),
              "name": name.split()[0], "plots": False, **({"batch_size": spec["batch_size"]} if "batch_size" in spec
                                                          else {})}
    return visiontrain.train(config, quiet=True).dir


def engines(run: Path, folder: Path, threads: int) -> tuple[dict[str, Forward], dict[str, Path]]:
    """Each engine's forward (normalized float [N,C,H,W] → logits) and its file."""
    loaded = visiontrain.load(run, device="cpu")
    files = {"ONNX fp32": export(run, "onnx", folder).path,
             "ONNX int8": export(run, "onnx", folder, quantize="int8").path,
             "OpenVINO fp32": export(run, "openvino", folder).path,
             "OpenVINO int8": export(run, "openvino", folder, quantize="int8").path}

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded.model(x)

    forwards = {"PyTorch eager": eager} | {k: load_exported(p, device="cpu", threads=threads).forward
                                          for k, p in files.items()}
    return forwards, files


def timings(forwards: dict[str, Forward], size: int, reps: int, batch_reps: int) -> dict[str, dict[str, float]]:
    one, many = torch.randn(1, 3, size, size), torch.randn(32, 3, size, size)
    lat: dict[str, list[float]] = {k: [] for k in forwards}
    thr: dict[str, list[float]] = {k: [] for k in forwards}
    # Engine by engine, in two rounds (the second in reverse order): onnxruntime's and OpenVINO's threads spin
    # for a while after a call, which would slow whichever engine runs next if they took turns call by call.
    for order in (list(forwards), list(forwards)[::-1]):
        for k in order:
            f = forwards[k]
            f(one), f(many)  # warm-up: first calls compile kernels and allocate
            for _ in range(reps // 2):
                t = time.perf_counter()
                f(one)
                lat[k].append(time.perf_counter() - t)
            for _ in range(max(1, batch_reps // 2)):
                t = time.perf_counter()
                f(many)
                thr[k].append(time.perf_counter() - t)
    return {k: {"p50_ms": 1e3 * statistics.median(lat[k]), "p99_ms": 1e3 * float(np.percentile(lat[k], 99)),
                "images_s": 32 * len(thr[k]) / sum(thr[k])} for k in forwards}


def accuracies(run: Path, forwards: dict[str, Forward]) -> dict[str, dict]:
    loaded = visiontrain.load(run, device="cpu")
    return {k: accuracy_check(loaded, f) for k, f in forwards.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="batch-1 calls per engine [default: 30]")
    parser.add_argument("--batch-reps", type=int, default=5, help="batch-32 calls per engine [default: 5]")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="threads per engine (torch, onnxruntime, OpenVINO) "
                        "[default: 1: on a shared machine more threads wait on each other, see the docs]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            spec = MODELS[name]
            run = train(name, spec, Path(tmp))
            forwards, files = engines(run, Path(tmp) / name.split()[0], args.threads)
            size = int(spec["data"]["args"].get("size", 32))
            speed = timings(forwards, size, args.reps, args.batch_reps)
            acc = accuracies(run, forwards)
            for k in ENGINES:
                mib = None if k not in files else (files[k].stat().st_size + sum(
                    f.stat().st_size for f in [files[k].with_suffix(".bin")] if f.is_file())) / 2**20
                rows.append((name, k, speed[k], acc[k], mib))
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {platform.processor() or platform.machine()} · "
          f"{_cpu()} · {os.cpu_count()} cores, {args.threads} thread(s) per engine · torch {torch.__version__} · "
          f"{_versions()}")
    print(f"# uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print("| model | engine | batch 1 p50 ms | batch 1 p99 ms | batch 32 images/s | vs ONNX fp32 | file MiB | "
          "test accuracy | top-1 agreement with fp32 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = {r[0]: r[2]["images_s"] for r in rows if r[1] == "ONNX fp32"}
    for name, k, s, a, mib in rows:
        print(f"| {name} | {k} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['images_s']:.0f} | "
              f"{s['images_s'] / base[name]:.2f}x | {'' if mib is None else f'{mib:.2f}'} | {a['accuracy']:.2f}% | "
              f"{a['top1_agreement']:.2f}% |")


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "cpu"


def _versions() -> str:
    import onnxruntime
    import openvino

    return f"onnxruntime {onnxruntime.__version__} · openvino {openvino.__version__.split('-')[0]}"


if __name__ == "__main__":
    main()
