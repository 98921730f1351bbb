"""Start-up time of the `visiontrain` command beside its peers, each a fresh process, in one run.

    python benchmarks/bench_startup.py [--reps 7]

Trains a tiny run (small_cnn on 32 px synthetic shapes, one epoch) in a temporary folder, writes one image, then
times, round-robin so that the machine's load falls on every row alike (medians of ``--reps`` runs): the CPU time
of each fresh process (user + system, from ``getrusage(RUSAGE_CHILDREN)``: what other jobs on a shared machine do
not change much) and its wall time:

* ``python -c pass`` and ``python -c "import torch"`` — the floors;
* the notes' plain-PyTorch script (10 lines): build the net, load the state dict, preprocess one image with
  torchvision.transforms, print the argmax — the reference for ``predict`` (target: within 1.5x);
* the same script without torchvision (PIL → tensor → ``F.interpolate``), for what torchvision itself costs;
* ``visiontrain --help`` (target: ≤ 0.6x the reference script's CPU time) and ``visiontrain predict RUN one.png``
  (target: ≤ 1.2x).

Machines are noisy: compare the rows of one run (the ratios), and read them with the load average printed.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN_TORCHVISION = """\
import sys, torch, torchvision.transforms.v2 as T
from PIL import Image
from safetensors.torch import load_file
from torch import nn
def block(i, o, k=3):
    return [nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
model = nn.Sequential(*block(3, 16, 5), *block(16, 32), *block(32, 64), nn.Flatten(), nn.Linear(1024, 4))
model.load_state_dict(load_file(sys.argv[1])); model.eval()
tf = T.Compose([T.PILToTensor(), T.Resize((32, 32)), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
with torch.no_grad(): print(model(tf(Image.open(sys.argv[2]).convert("RGB"))[None]).argmax(1).item())
"""

PLAIN_TORCH = """\
import sys, numpy as np, torch, torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn
def block(i, o, k=3):
    return [nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
model = nn.Sequential(*block(3, 16, 5), *block(16, 32), *block(32, 64), nn.Flatten(), nn.Linear(1024, 4))
model.load_state_dict(load_file(sys.argv[1])); model.eval()
x = torch.from_numpy(np.asarray(Image.open(sys.argv[2]).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
with torch.no_grad(): print(model(x).argmax(1).item())
"""


REFERENCE = "plain PyTorch script (torchvision transforms)"


def make_run(folder: Path) -> tuple[Path, Path]:
    """A one-epoch small_cnn run and one of its test images."""
    import visiontrain  # the harness only: every timed command is its own process

    run = visiontrain.train({"data": "synthetic", "data_args": {"train": 64, "val": 16, "test": 16}, "epochs": 1,
                             "plots": False, "out": str(folder), "name": "startup"}, quiet=True)
    image = next(iter(sorted((run.dir / "samples").glob("*.png"))))
    return run.dir, image


def commands(folder: Path, run: Path, image: Path) -> dict[str, list[str]]:
    import json

    prep = json.loads((run / "checkpoints" / "best.json").read_text(encoding="utf-8"))["preprocessing"]
    weights = str(run / "checkpoints" / "best.safetensors")
    scripts = {}
    for name, text in (("plain_torchvision.py", PLAIN_TORCHVISION), ("plain_torch.py", PLAIN_TORCH)):
        path = folder / name
        path.write_text(text.replace("MEAN", repr(prep["mean"])).replace("STD", repr(prep["std"])), encoding="utf-8")
        scripts[name] = [sys.executable, str(path), weights, str(image)]
    py = sys.executable
    return {
        "python -c pass": [py, "-c", "pass"],
        'python -c "import torch"': [py, "-c", "import torch"],
        "plain PyTorch script (torchvision transforms)": scripts["plain_torchvision.py"],
        "plain PyTorch script (no torchvision)": scripts["plain_torch.py"],
        "visiontrain --help": [py, "-m", "visiontrain", "--help"],
        "visiontrain predict RUN one.png": [py, "-m", "visiontrain", "predict", str(run), str(image)],
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_one(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one fresh process running ``argv``."""
    cpu, start = _children_cpu(), time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=True)
    return _children_cpu() - cpu, time.perf_counter() - start


def time_all(cmds: dict[str, list[str]], reps: int) -> dict[str, list[tuple[float, float]]]:
    """``reps`` (CPU s, wall s) pairs per command, round-robin."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for argv in cmds.values():  # once untimed: the file cache warm for every row alike
        subprocess.run(argv, env=env, capture_output=True, check=True)
    for _ in range(reps):
        for name, argv in cmds.items():
            times[name].append(time_one(argv, env))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="timed runs of each command (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run, image = make_run(folder)
        cmds = commands(folder, run, image)
        load_before = os.getloadavg()
        times = time_all(cmds, args.reps)
        load_after = os.getloadavg()
    print(f"{args.reps} runs each, round-robin; load average (1/5/15 min) before "
          f"{'/'.join(f'{x:.2f}' for x in load_before)}, after {'/'.join(f'{x:.2f}' for x in load_after)}; "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print(report(times))


def report(times: dict[str, list[tuple[float, float]]]) -> str:
    """The table (medians; ratios of CPU time to the reference script's) and the verdict on both targets."""
    cpu = {name: statistics.median(c for c, _ in t) for name, t in times.items()}
    wall = {name: statistics.median(w for _, w in t) for name, t in times.items()}
    plain = cpu[REFERENCE]
    lines = ["| command | median CPU s | min–max CPU s | median wall s | CPU ÷ plain script |",
             "| --- | --- | --- | --- | --- |"]
    for name, t in times.items():
        lo, hi = min(c for c, _ in t), max(c for c, _ in t)
        lines.append(f"| {name} | {cpu[name]:.2f} | {lo:.2f}–{hi:.2f} | {wall[name]:.2f} | {cpu[name] / plain:.2f}x |")
    help_ratio, predict_ratio = cpu["visiontrain --help"] / plain, cpu["visiontrain predict RUN one.png"] / plain
    lines.append(f"\nCPU time ÷ the plain script's: visiontrain --help {help_ratio:.2f}x (target ≤ 0.6x: "
                 f"{_verdict(help_ratio <= 0.6)}); predict {predict_ratio:.2f}x (target ≤ 1.2x: "
                 f"{_verdict(predict_ratio <= 1.2)})")
    return "\n".join(lines)


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


if __name__ == "__main__":
    main()
