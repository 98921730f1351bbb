"""A busy CPU: `visiontrain train --recipe fast` alone and beside busy processes, torch's threads vs `threads: auto`.

Each run is a fresh CLI process (`--plots off`). Modes: ``torch`` is the old behaviour (``--threads torch``:
torch's default thread count, one per core, and OpenMP's default spin-then-sleep waiting); ``auto`` is the
default ``threads: auto`` (usable cores less what others keep busy; passive waiting on a shared host). Loads:
``alone``, and ``busy`` with ``--busy`` processes that spin in pure Python, started before the run and stopped
after it by this script. Runs are interleaved (mode inside load inside round), ``--repeats`` rounds; medians.

Reported per mode and load: training seconds (summary.json ``time.train_s``), the command's wall seconds, its
CPU-seconds (user+sys of the process tree), test accuracy, the thread count it chose, and the 1-minute load
average before it started. The target: the busy run's slowdown over the same mode alone at most 1.5x the fair
share, (busy + 1) / cores for a job that uses every core alone (1.5 on 2 cores beside 2 busy processes), and
``auto`` alone no slower than ``torch`` alone.

    python benchmarks/bench_busy.py [--data-dir data] [--busy 2] [--repeats 2] [--modes torch,auto]
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import subset_mnist

from visiontrain.data.mnist import prepare_mnist

SPIN = "while True:\n    pass\n"


def start_busy(count: int) -> list[subprocess.Popen]:
    """``count`` processes that each keep one core busy until :func:`stop_busy`."""
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for proc in procs:  # only the processes this script started, by their own handle
        proc.kill()
    for proc in procs:
        proc.wait()


def run_fast(mode: str, root: str, out: str, extra: list[str]) -> dict:
    """One `visiontrain train --recipe fast` in a fresh process: its summary plus wall and CPU of the tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    cmd = [sys.executable, "-m", "visiontrain", "train", "--recipe", "fast", "--data-dir", root, "--out", out,
           "--name", mode, "--overwrite", "--plots", "off", "--threads", mode, *extra]
    load = os.getloadavg()[0]
    ru0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((Path(out) / mode / "summary.json").read_text())
    return {"train_s": summary["time"]["train_s"], "wall_s": wall, "load": load,
            "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
            "accuracy": summary.get("test", summary["final"]).get("accuracy", 0.0),
            "threads": summary.get("threads", "?")}


def measure(root: str, modes: list[str], busy: int, repeats: int, extra: list[str]) -> dict[tuple[str, str], list]:
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as out:
        for r in range(repeats):
            for load in ("alone", "busy"):
                order = modes if r % 2 == 0 else modes[::-1]
                for mode in order:
                    procs = start_busy(busy) if load == "busy" else []
                    try:
                        if procs:
                            time.sleep(1.0)  # let the spinners take their cores (and the load average rise)
                        res = run_fast(mode, root, out, extra)
                    finally:
                        stop_busy(procs)
                    results.setdefault((mode, load), []).append(res)
                    print(f"  round {r + 1} {load:5s} {mode:6s} train {res['train_s']:6.1f} s  wall "
                          f"{res['wall_s']:6.1f} s  CPU {res['cpu_s']:6.1f} s  test {100 * res['accuracy']:.2f}%  "
                          f"threads {res['threads']}"
                          f"  load {res['load']:.2f}", file=sys.stderr, flush=True)
    return results


def report(results: dict[tuple[str, str], list[dict]], busy: int, cores: int) -> list[str]:
    """One markdown table: medians per mode and load, the busy/alone slowdown and the target."""
    fair = max(1.0, (busy + 1) / cores)
    med = statistics.median
    lines = [f"fair-share slowdown with {busy} busy processes on {cores} cores: {fair:.2f}x; target <= "
             f"{1.5 * fair:.2f}x", "",
             "| mode | load | train s | wall s | CPU-s | test acc | threads | load avg | busy ÷ alone (train s) | "
             "target |", "|" + " --- |" * 10]
    for (mode, load), runs in results.items():
        row = {k: med(r[k] for r in runs) for k in ("train_s", "wall_s", "cpu_s", "accuracy")}
        slowdown, target = "", ""
        if load == "busy" and (mode, "alone") in results:
            alone = med(r["train_s"] for r in results[(mode, "alone")])
            ratio = row["train_s"] / alone
            slowdown = f"{ratio:.2f}x"
            target = f"<= {1.5 * fair:.2f}x: {'met' if ratio <= 1.5 * fair else 'MISSED'}"
        loads = [r["load"] for r in runs]
        lines.append(f"| {mode} | {load} | {row['train_s']:.1f} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | "
                     f"{100 * row['accuracy']:.2f}% | {runs[-1]['threads']} | {min(loads):.1f}–{max(loads):.1f} | "
                     f"{slowdown} | {target} |")
    if ("auto", "alone") in results and ("torch", "alone") in results:
        ratio = (med(r["train_s"] for r in results[("auto", "alone")])
                 / med(r["train_s"] for r in results[("torch", "alone")]))
        lines.append(f"\nalone: auto ÷ torch train seconds = {ratio:.2f}x (target <= 1.0x within noise)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside the busy runs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default="torch,auto")
    parser.add_argument("--train-images", type=int, help="train on the first N MNIST images only (a quick check)")
    parser.add_argument("--train-arg", action="append", default=[], help="one more `train` argument (repeatable)")
    args = parser.parse_args()
    root = os.path.abspath(args.data_dir)
    prepare_mnist(root)
    if args.train_images:
        root = subset_mnist(root, tempfile.mkdtemp(prefix="bench-busy-"), args.train_images,
                            max(1, args.train_images // 6))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"# {cores} cores | {args.train_images or 60000} train images | load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} | {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    results = measure(root, args.modes.split(","), args.busy, args.repeats, args.train_arg)
    print("\n".join(report(results, args.busy, cores)), flush=True)


if __name__ == "__main__":
    main()
