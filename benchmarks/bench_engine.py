"""Training-loop overhead on real MNIST: visiontrain vs the seeds' routine vs a bare loop vs Lightning.

Same model (seed 002's Net), same optimizer (SGD, lr 0.01), same batch size (64), one epoch over the same
60,000 training images, in one process, one after another. Prints img/s, each peer's ratio to
visiontrain, and test accuracy after the epoch. Machines are noisy: compare ratios, not seconds.

    python benchmarks/bench_engine.py [--data-dir data] [--epochs 1] [--peers seeds,bare,lightning,visiontrain]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

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


def seeds_routine(root: str, epochs: int) -> tuple[float, float]:
    """The notes' loop: torchvision MNIST (one PIL image per sample) + ToTensor/Normalize + DataLoader."""
    tf = torchvision.transforms.Compose([torchvision.transforms.ToTensor(),
                                         torchvision.transforms.Normalize((MEAN,), (STD,))])
    data = torchvision.datasets.MNIST(root, train=True, transform=tf, download=False)
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, drop_last=True)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        model.train()
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs), target=labels)
            loss.backward()
            optimizer.step()
            seen += len(labels)
    return seen / (time.perf_counter() - start), _test_accuracy(model, root)


def _memory_batches(root: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_mnist(root, train=True)
    return images.unsqueeze(1), labels


def bare_loop(root: str, epochs: int) -> tuple[float, float]:
    """A hand-written in-memory loop: uint8 tensor, shuffled index slices, normalize per batch."""
    images, labels = _memory_batches(root)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
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
    return seen / (time.perf_counter() - start), _test_accuracy(model, root)


def lightning_trainer(root: str, epochs: int) -> tuple[float, float]:
    """PyTorch Lightning's Trainer over the same in-memory float batches (its usual TensorDataset set-up)."""
    import lightning as L

    images, labels = _memory_batches(root)
    x = (images.float() / 255 - MEAN) / STD

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            return F.cross_entropy(self.net(inputs), targets)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

    module = Module()
    loader = DataLoader(TensorDataset(x, labels), batch_size=BATCH, shuffle=True)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(module, loader)
    return len(labels) * epochs / (time.perf_counter() - start), _test_accuracy(module.net, root)


def visiontrain_run(root: str, epochs: int) -> tuple[float, float]:
    """visiontrain itself, with its logging, TensorBoard, checkpoints and validation all on."""
    import visiontrain

    with tempfile.TemporaryDirectory() as out:
        run = visiontrain.train({"data": "mnist", "data_dir": root, "model": "seed_net", "optimizer": "sgd",
                                 "lr": LR, "batch_size": BATCH, "schedule": "none", "epochs": epochs,
                                 "val_split": 0.0, "out": out, "optim.momentum": 0.0}, quiet=True)
        images_per_s = run.summary["train"]["img_per_s"]
        return images_per_s, run.summary["final"]["accuracy"]


PEERS = {"seeds": seeds_routine, "bare": bare_loop, "lightning": lightning_trainer, "visiontrain": visiontrain_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--peers", default=",".join(PEERS))
    args = parser.parse_args()
    prepare_mnist(args.data_dir)
    print(f"# {platform.node()} | {platform.processor() or platform.machine()} | torch {torch.__version__} | "
          f"{torch.get_num_threads()} threads | {time.strftime('%Y-%m-%d')}")
    results = {}
    for name in args.peers.split(","):
        results[name] = PEERS[name](args.data_dir, args.epochs)
        print(f"{name:12s} {results[name][0]:9,.0f} img/s   test accuracy {100 * results[name][1]:.2f}%", flush=True)
    if "visiontrain" in results:
        ours = results["visiontrain"][0]
        print("\nvisiontrain img/s ÷ peer img/s:")
        for name, (rate, _) in results.items():
            if name != "visiontrain":
                print(f"  vs {name:10s} {ours / rate:5.2f}x")


if __name__ == "__main__":
    main()
