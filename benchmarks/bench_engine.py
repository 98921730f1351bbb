"""Training-loop overhead on real MNIST: visiontrain vs the seeds' routine vs a bare loop vs Lightning.

Same model (seed 002's Net), the seeds' hyperparameters (SGD lr 0.01, no momentum, batch 64, fp32, no
augmentation), one epoch over the 60,000 training images. Each peer runs as its **own fresh process** (cold, as
a user runs it: no peer inherits another's warm kernels or allocator state), the peers interleaved and rotated
round by round, ``--repeats`` rounds; ratios are medians over the rounds.

Per peer and round it records the training loop's img/s (wall), and — because a shared machine makes wall time
noise — the loop's CPU-seconds (user+sys of every thread), system seconds and minor page faults (getrusage inside
the child around the loop), the whole process's CPU-seconds, system seconds and minor faults (getrusage of
children in the parent), and the 1-minute load average before it started. All peers get the same thread count
(``--threads``, default 1: on a busy machine a second thread mostly measures the neighbours).

    python benchmarks/bench_engine.py [--data-dir data] [--epochs 1] [--repeats 3] [--threads 1]
                                      [--peers seeds,bare,lightning,visiontrain]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from visiontrain.data.mnist import load_mnist, prepare_mnist
from visiontrain.models import ModelInput, create_model

BATCH, LR = 64, 0.01
MEAN, STD = 0.1307, 0.3081


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("seed_net", ModelInput(1, 28, 10))


@torch.no_grad()
def _test_accuracy(model: torch.nn.Module, root: str) -> float:
    images, labels = load_mnist(root, train=False)
    x = (images.unsqueeze(1).float() / 255 - MEAN) / STD
    model.eval()
    correct = sum(int((model(x[i:i + 1000]).argmax(1) == labels[i:i + 1000]).sum()) for i in range(0, len(x), 1000))
    return correct / len(labels)


class LoopMeter:
    """Wall, CPU (user+sys of the whole process: every thread), system seconds and minor faults of the training
    loop only, summed over the stretches between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.sys = 0.0
        self.minflt = 0
        self._at: tuple[float, resource.struct_rusage] | None = None

    def start(self) -> None:
        self._at = (time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF))

    def stop(self) -> None:
        assert self._at is not None
        wall, ru0 = self._at
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        self.wall += time.perf_counter() - wall
        self.cpu += (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        self.sys += ru1.ru_stime - ru0.ru_stime
        self.minflt += ru1.ru_minflt - ru0.ru_minflt
        self._at = None

    def result(self, seen: int, accuracy: float) -> dict:
        return {"img_per_s": seen / self.wall if self.wall > 0 else 0.0, "loop_wall_s": self.wall,
                "loop_cpu_s": self.cpu, "loop_sys_s": self.sys, "loop_minflt": self.minflt, "accuracy": accuracy}


def seeds_routine(root: str, epochs: int) -> dict:
    """The notes' loop: torchvision MNIST (one PIL image per sample) + ToTensor/Normalize + DataLoader."""
    tf = torchvision.transforms.Compose([torchvision.transforms.ToTensor(),
                                         torchvision.transforms.Normalize((MEAN,), (STD,))])
    data = torchvision.datasets.MNIST(root, train=True, transform=tf, download=False)
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, drop_last=True)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    meter, seen = LoopMeter(), 0
    for _ in range(epochs):
        meter.start()
        model.train()
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs), target=labels)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        meter.stop()
    return meter.result(seen, _test_accuracy(model, root))


def _memory_batches(root: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_mnist(root, train=True)
    return images.unsqueeze(1), labels


def bare_loop(root: str, epochs: int) -> dict:
    """A hand-written in-memory loop: uint8 tensor, shuffled index slices, normalize per batch."""
    images, labels = _memory_batches(root)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    meter, seen = LoopMeter(), 0
    for _ in range(epochs):
        meter.start()
        model.train()
        order = torch.randperm(len(labels), generator=gen)
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            x = (images[idx].float() / 255 - MEAN) / STD
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), labels[idx])
            loss.backward()
            optimizer.step()
            seen += len(idx)
        meter.stop()
    return meter.result(seen, _test_accuracy(model, root))


def lightning_trainer(root: str, epochs: int) -> dict:
    """PyTorch Lightning's Trainer over the same in-memory float batches (its usual TensorDataset set-up)."""
    import lightning as L

    images, labels = _memory_batches(root)
    x = (images.float() / 255 - MEAN) / STD
    meter = LoopMeter()

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            return F.cross_entropy(self.net(inputs), targets)

        def on_train_epoch_start(self) -> None:
            meter.start()

        def on_train_epoch_end(self) -> None:
            meter.stop()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

    module = Module()
    loader = DataLoader(TensorDataset(x, labels), batch_size=BATCH, shuffle=True)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    return meter.result(len(labels) * epochs, _test_accuracy(module.net, root))


def visiontrain_run(root: str, epochs: int) -> dict:
    """visiontrain itself, with its logging, TensorBoard, checkpoints and test-set evaluation all on; the seeds'
    hyperparameters (no momentum, no augmentation, no schedule)."""
    import visiontrain
    from visiontrain.engine.callbacks import Callback

    meter = LoopMeter()

    class Window(Callback):
        """The training loop only: from the epoch's start to its last step (evaluation follows)."""

        order = "measure"
        seen = 0

        def on_epoch_start(self, state) -> None:
            meter.start()

        def on_batch_end(self, state) -> None:
            self.seen += len(state.labels)
            if state.batch_in_epoch == state.batches_per_epoch:
                meter.stop()

    window = Window()
    with tempfile.TemporaryDirectory() as out:
        run = visiontrain.train({"data": "mnist", "data_dir": root, "model": "seed_net", "optimizer": "sgd",
                                 "lr": LR, "batch_size": BATCH, "schedule": "none", "epochs": epochs,
                                 "val_split": 0.0, "out": out, "optim.momentum": 0.0, "augment": "none",
                                 "threads": torch.get_num_threads()}, quiet=True, callbacks=[window])
        return meter.result(window.seen, run.summary["final"]["accuracy"])


PEERS: dict[str, Callable[[str, int], dict]] = {"seeds": seeds_routine, "bare": bare_loop,
                                                "lightning": lightning_trainer, "visiontrain": visiontrain_run}


def child(name: str, root: str, epochs: int) -> None:
    """One peer in this (fresh) process; prints its result as one JSON line."""
    print(json.dumps(PEERS[name](root, epochs)), flush=True)


@dataclass
class Sample:
    """One peer's run in one round: the child's loop figures plus the parent's view of the whole process."""

    name: str
    loop: dict
    proc_cpu_s: float
    proc_sys_s: float
    proc_minflt: int
    proc_wall_s: float
    load: float
    extra: dict = field(default_factory=dict)


def _load() -> float:
    return os.getloadavg()[0]


def run_peer(name: str, root: str, epochs: int, threads: int, env: dict[str, str] | None = None) -> Sample:
    """``name`` in a fresh interpreter; CPU and faults of its whole process tree from RUSAGE_CHILDREN.
    ``visiontrain@base`` is visiontrain from the source folder in ``env["PYTHONPATH"]`` (an older commit)."""
    child_env = {**os.environ, "OMP_NUM_THREADS": str(threads), **(env or {})}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name.split("@")[0], "--data-dir", root,
           "--epochs", str(epochs), "--threads", str(threads)]
    load = _load()
    ru0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env, check=False)
    wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"peer {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    loop = json.loads(proc.stdout.strip().splitlines()[-1])
    return Sample(name, loop, (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
                  ru1.ru_stime - ru0.ru_stime, ru1.ru_minflt - ru0.ru_minflt, wall, load)


def rounds(names: list[str], repeats: int, run: Callable[[str], Sample]) -> list[list[Sample]]:
    """``repeats`` rounds of every peer, one at a time, the order rotated each round so that no peer always
    runs first (or right after the same neighbour)."""
    out = []
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        samples = []
        for name in order:
            samples.append(run(name))
            s = samples[-1]
            print(f"  round {r + 1} {name:12s} {s.loop['img_per_s']:7,.0f} img/s  loop {s.loop['loop_cpu_s']:6.1f} "
                  f"CPU-s (sys {s.loop['loop_sys_s']:5.1f}, {s.loop['loop_minflt'] / 1e6:5.2f} M faults)  process "
                  f"{s.proc_cpu_s:6.1f} CPU-s (sys {s.proc_sys_s:5.1f}, {s.proc_minflt / 1e6:5.2f} M faults)  "
                  f"wall {s.proc_wall_s:5.1f} s  load {s.load:.2f}", file=sys.stderr, flush=True)
        out.append(samples)
    return out


def summarize(all_rounds: list[list[Sample]], ours: str = "visiontrain") -> dict[str, dict]:
    """Per peer: medians of its figures, and the medians over rounds of ``ours`` ÷ peer (img/s, and CPU-s of the
    loop and of the process: peer's CPU-s ÷ ours, so > 1 means ours is cheaper)."""
    by_name: dict[str, list[Sample]] = {}
    for samples in all_rounds:
        for s in samples:
            by_name.setdefault(s.name, []).append(s)
    out = {}
    for name, samples in by_name.items():
        med = statistics.median
        row = {"img_per_s": med(s.loop["img_per_s"] for s in samples),
               "accuracy": med(s.loop["accuracy"] for s in samples),
               "loop_cpu_s": med(s.loop["loop_cpu_s"] for s in samples),
               "loop_sys_s": med(s.loop["loop_sys_s"] for s in samples),
               "loop_minflt": med(s.loop["loop_minflt"] for s in samples),
               "proc_cpu_s": med(s.proc_cpu_s for s in samples), "proc_sys_s": med(s.proc_sys_s for s in samples),
               "proc_minflt": med(s.proc_minflt for s in samples),
               "proc_wall_s": med(s.proc_wall_s for s in samples),
               "load": (min(s.load for s in samples), max(s.load for s in samples)), "n": len(samples)}
        if name != ours and ours in by_name:
            pairs = [(o, p) for o, p in zip(by_name[ours], samples, strict=False)]
            row["speed_ratio"] = med(o.loop["img_per_s"] / p.loop["img_per_s"] for o, p in pairs)
            row["loop_cpu_ratio"] = med(p.loop["loop_cpu_s"] / o.loop["loop_cpu_s"] for o, p in pairs)
            row["proc_cpu_ratio"] = med(p.proc_cpu_s / o.proc_cpu_s for o, p in pairs)
        out[name] = row
    return out


def print_summary(summary: dict[str, dict]) -> None:
    print("| peer | img/s | loop CPU-s | loop sys-s | loop minor faults | process CPU-s | process sys-s | "
          "process minor faults | wall s | load | test acc | visiontrain ÷ peer: img/s, loop CPU, process CPU |")
    print("|" + " --- |" * 12)
    for name, r in summary.items():
        ratios = (f"{r['speed_ratio']:.2f}x, {r['loop_cpu_ratio']:.2f}x, {r['proc_cpu_ratio']:.2f}x"
                  if "speed_ratio" in r else "")
        print(f"| {name} | {r['img_per_s']:,.0f} | {r['loop_cpu_s']:.1f} | {r['loop_sys_s']:.2f} | "
              f"{r['loop_minflt'] / 1e6:.2f} M | {r['proc_cpu_s']:.1f} | {r['proc_sys_s']:.2f} | "
              f"{r['proc_minflt'] / 1e6:.2f} M | {r['proc_wall_s']:.1f} | {r['load'][0]:.1f}–{r['load'][1]:.1f} | "
              f"{100 * r['accuracy']:.2f}% | {ratios} |", flush=True)


def subset_mnist(root: str, out: str, train: int, test: int) -> str:
    """The first ``train`` / ``test`` images of MNIST as IDX files under ``out`` (a shorter run of every peer)."""
    raw = os.path.join(out, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for is_train, n, stem in ((True, train, "train"), (False, test, "t10k")):
        images, labels = load_mnist(root, train=is_train)
        for suffix, array, magic in (("images-idx3-ubyte", images[:n], 0x803),
                                     ("labels-idx1-ubyte", labels[:n], 0x801)):
            with open(os.path.join(raw, f"{stem}-{suffix}"), "wb") as f:
                f.write(struct.pack(f">{array.dim() + 1}I", magic, *array.shape))
                f.write(array.to(torch.uint8).numpy().tobytes())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every peer (the same for all)")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--baseline-src", help="also run visiontrain from this src folder (e.g. `git archive` of an "
                        "older commit) as peer visiontrain@base, interleaved with the others: before/after a change")
    parser.add_argument("--train-images", type=int, help="train on the first N images only (test: the first N/6)")
    parser.add_argument("--child", choices=list(PEERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = os.path.abspath(args.data_dir)
    if args.child:
        torch.set_num_threads(args.threads)
        child(args.child, root, args.epochs)
        return
    prepare_mnist(root)
    if args.train_images:
        root = subset_mnist(root, tempfile.mkdtemp(prefix="bench-engine-"), args.train_images,
                            max(1, args.train_images // 6))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores | torch {torch.__version__} | "
          f"{args.train_images or 60000} train images | {args.threads} thread(s) per peer | {args.repeats} rounds "
          f"of fresh processes | load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} | {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    names = args.peers.split(",") + (["visiontrain@base"] if args.baseline_src else [])
    base_env = {"PYTHONPATH": os.path.abspath(args.baseline_src)} if args.baseline_src else {}
    all_rounds = rounds(names, args.repeats, lambda name: run_peer(name, root, args.epochs, args.threads,
                                                                   base_env if name.endswith("@base") else None))
    print_summary(summarize(all_rounds))


if __name__ == "__main__":
    main()
