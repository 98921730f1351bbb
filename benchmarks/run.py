"""The speed figures of docs/benchmarks.md in one run, each beside its peers, as one table.

    python benchmarks/run.py [--data-dir data] [--sections accuracy,overhead,gpu] [--seeds-epochs 6]

Sections:

* ``accuracy`` — time to accuracy on real MNIST (test split, 10k): ``visiontrain train --recipe fast`` and
  ``--recipe fast_long`` each as a fresh CLI process (cold, as a user runs it; seconds are the training epochs
  from ``summary.json``'s ``time.train_s``), against the seeds' routine (seed 002's Net, SGD lr 0.01, batch 64,
  torchvision MNIST one PIL image at a time) trained epoch by epoch until it reaches 99.0% (its seconds exclude
  the test passes).
* ``overhead`` — images/s and CPU-seconds on the seeds' own model and hyperparameters (benchmarks/bench_engine.py):
  visiontrain against the seeds' routine, a bare in-memory loop and PyTorch Lightning's ``Trainer``, each peer its
  own fresh process, interleaved, ``--overhead-repeats`` rounds (median ratios), ``--overhead-threads`` threads.
* ``gpu`` — only when CUDA is present: the two recipes on the GPU, and ResNet-50 training throughput at 224 px
  on synthetic images (bf16, channels_last) through visiontrain.

Machines are noisy: the ratios of one run are the result, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine

from visiontrain.data.mnist import prepare_mnist

Row = dict[str, str]


def recipe_cli(recipe: str, data_dir: str, out: str, device: str = "auto") -> dict:
    """``visiontrain train --recipe NAME`` in a fresh process; its summary.json."""
    name = f"{recipe}-{device}"
    cmd = [sys.executable, "-m", "visiontrain", "train", "--recipe", recipe, "--data-dir", data_dir, "--out", out,
           "--name", name, "--device", device, "--overwrite"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((Path(out) / name / "summary.json").read_text(encoding="utf-8"))


def seeds_to_accuracy(root: str, target: float, max_epochs: int) -> tuple[float | None, list[tuple[float, float]]]:
    """The notes' loop, epoch by epoch: (seconds of training until test accuracy >= target, [(s, acc)...])."""
    tf = torchvision.transforms.Compose([torchvision.transforms.ToTensor(),
                                         torchvision.transforms.Normalize((bench_engine.MEAN,), (bench_engine.STD,))])
    loader = DataLoader(torchvision.datasets.MNIST(root, train=True, transform=tf, download=False),
                        batch_size=bench_engine.BATCH, shuffle=True)
    model = bench_engine._model()
    optimizer = torch.optim.SGD(model.parameters(), lr=bench_engine.LR)
    trained, curve = 0.0, []
    for _ in range(max_epochs):
        start = time.perf_counter()
        model.train()
        for inputs, labels in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
        trained += time.perf_counter() - start
        curve.append((trained, bench_engine._test_accuracy(model, root)))
        print(f"  seeds routine epoch {len(curve)}: {trained:.1f} s, test {100 * curve[-1][1]:.2f}%", flush=True)
        if curve[-1][1] >= target:
            return trained, curve
    return None, curve


def accuracy_section(root: str, out: str, max_epochs: int, device: str = "auto") -> list[Row]:
    rows = []
    fast = recipe_cli("fast", root, out, device)
    rows.append(_recipe_row("--recipe fast", fast, 0.990, 5.0))
    rows.append(_recipe_row("--recipe fast_long", recipe_cli("fast_long", root, out, device), 0.995, 60.0))
    if device == "cuda":
        return rows
    seconds, curve = seeds_to_accuracy(root, 0.990, max_epochs)
    ours, spent = fast["time"]["train_s"], curve[-1][0]
    reached = f"{seconds:.1f} s ({len(curve)} epochs)" if seconds else f"not in {max_epochs} epochs ({spent:.0f} s)"
    ratio = f"{seconds / ours:.1f}x slower" if seconds else f"> {spent / ours:.0f}x slower"
    rows.append({"what": "seeds' routine to 99.0% (baseline)", "value": reached,
                 "detail": f"test {100 * curve[-1][1]:.2f}%; {ratio} than --recipe fast", "target": "> 4 epochs"})
    return rows


def _recipe_row(label: str, summary: dict, target: float, budget_s: float) -> Row:
    seconds, accuracy = summary["time"]["train_s"], summary["test"]["accuracy"]
    met = "met" if accuracy >= target and seconds <= budget_s else "MISSED"
    return {"what": f"{label} on {summary['device']} ({summary['precision']})", "value": f"{seconds:.1f} s",
            "detail": f"test {100 * accuracy:.2f}%, {summary['epochs_completed']} epochs",
            "target": f">= {100 * target:.1f}% in <= {budget_s:g} s: {met}"}


def overhead_section(root: str, epochs: int, repeats: int = 3, threads: int = 1) -> list[Row]:
    """bench_engine's peers, each in its own fresh process, interleaved, ``repeats`` rounds; median ratios."""
    names = list(bench_engine.PEERS)
    summary = bench_engine.summarize(bench_engine.rounds(
        names, repeats, lambda name: bench_engine.run_peer(name, root, epochs, threads)))
    targets = {"seeds": 1.2, "bare": 1.0, "lightning": 1.0}
    rows = []
    for name, r in summary.items():
        row = {"what": f"seed_net img/s: {name}", "value": f"{r['img_per_s']:,.0f}",
               "detail": f"test {100 * r['accuracy']:.2f}%; loop {r['loop_cpu_s']:.1f} CPU-s (sys "
                         f"{r['loop_sys_s']:.1f}, {r['loop_minflt'] / 1e6:.2f} M faults); load "
                         f"{r['load'][0]:.1f}–{r['load'][1]:.1f}",
               "target": ""}
        if name in targets:
            row["detail"] += (f"; visiontrain ÷ this: {r['speed_ratio']:.2f}x img/s, {r['loop_cpu_ratio']:.2f}x "
                              f"loop CPU")
            met = min(r["speed_ratio"], r["loop_cpu_ratio"]) >= targets[name]
            row["target"] = f">= {targets[name]}x: {'met' if met else 'MISSED'}"
        rows.append(row)
    return rows


def gpu_section(root: str, out: str) -> list[Row]:
    rows = accuracy_section(root, out, 0, device="cuda")
    import visiontrain

    run = visiontrain.train({"data": {"name": "synthetic", "args": {"size": 224, "train": 20480, "val": 256,
                                                                    "test": 256}},
                             "model": "resnet50", "batch_size": 256, "epochs": 2, "precision": "bf16",
                             "train.channels_last": True, "device": "cuda", "out": out, "name": "resnet50"},
                            quiet=True, overwrite=True)
    rate = run.summary["train"]["img_per_s"]
    met = "met" if rate >= 4000 else "MISSED"
    rows.append({"what": "ResNet-50 224 px training img/s (bf16, channels_last)", "value": f"{rate:,.0f}",
                 "detail": "synthetic images, last epoch", "target": f">= 4,000: {met}"})
    return rows


def print_table(rows: list[Row]) -> None:
    cols = ["what", "value", "detail", "target"]
    print("| " + " | ".join(cols) + " |")
    print("| " + " | ".join("---" for _ in cols) + " |")
    for row in rows:
        print("| " + " | ".join(row.get(c, "") for c in cols) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--sections", default="accuracy,overhead,gpu")
    parser.add_argument("--seeds-epochs", type=int, default=6, help="most epochs the seeds' routine gets for 99.0%%")
    parser.add_argument("--overhead-epochs", type=int, default=1)
    parser.add_argument("--overhead-repeats", type=int, default=3)
    parser.add_argument("--overhead-threads", type=int, default=1)
    args = parser.parse_args()
    root = os.path.abspath(args.data_dir)
    prepare_mnist(root)
    sections = args.sections.split(",")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores | torch {torch.__version__} | "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()} | "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'} | {time.strftime('%Y-%m-%d')}",
          flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as out:
        if "accuracy" in sections:
            rows += accuracy_section(root, out, args.seeds_epochs)
        if "overhead" in sections:
            rows += overhead_section(root, args.overhead_epochs, args.overhead_repeats, args.overhead_threads)
        if "gpu" in sections and torch.cuda.is_available():
            rows += gpu_section(root, out)
        elif "gpu" in sections:
            print("gpu: no CUDA device here; section skipped", flush=True)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
