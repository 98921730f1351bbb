"""Time to 99% on MNIST with ``--recipe fast``: CPU-seconds of training, over seeds x thread counts.

    python benchmarks/bench_fast.py [--data-dir data] [--seeds 0,1,2,3,4] [--threads 1,2] [--recipe fast]

Each run is ``visiontrain train --recipe fast --plots off --seed S --threads T`` as a fresh process, the runs
interleaved (seed by seed, every thread count in turn) so that the machine's load falls on every column alike.
Per run it reports:

* **training CPU-s** — ``summary.json``'s ``time.train_cpu_s``: the process's CPU time (user + system, every
  thread) over the training epochs; what other jobs on a shared machine change least (target ≤ 3.0 s on one
  thread). Wall seconds of training (``time.train_s``) beside it;
* **command CPU-s and wall** — the whole process (imports, data, training, evaluation, files), from
  ``getrusage(RUSAGE_CHILDREN)`` and the clock; the wall ÷ training-wall ratio (target ≤ 2 on an idle machine);
* **val and test accuracy** — the recipe was tuned on val; test is only reported (target: the minimum over
  every seed and thread count ≥ 99.0%).

The load average before and after is printed: on a busy machine the wall columns mean little, CPU-s more.
Extra arguments after ``--`` go to every ``visiontrain train`` (``-- --data synthetic --epochs 1`` for a quick
check without MNIST).
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

TARGET_CPU_S, TARGET_ACC, TARGET_WALL_RATIO = 3.0, 0.99, 2.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(recipe: str, seed: int, threads: int, data_dir: str, out: Path, extra: list[str]) -> dict[str, float]:
    """One fresh ``visiontrain train`` process; its timings and accuracies."""
    name = f"{recipe}-s{seed}-t{threads}"
    cmd = [sys.executable, "-m", "visiontrain", "train", "--recipe", recipe, "--data-dir", data_dir, "--out",
           str(out), "--name", name, "--overwrite", "--quiet", "--plots", "off", "--seed", str(seed), "--threads",
           str(threads), *extra]
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    summary = json.loads((out / name / "summary.json").read_text(encoding="utf-8"))
    t = summary["time"]
    return {"seed": seed, "threads": threads, "train_cpu_s": t["train_cpu_s"], "train_s": t["train_s"],
            "command_cpu_s": cpu, "command_s": wall, "val": summary["best"].get("accuracy", float("nan")),
            "test": summary.get("test", {}).get("accuracy", float("nan"))}


def report(rows: list[dict[str, float]]) -> str:
    """Per thread count: medians of the timings, median and minimum accuracy; then the verdicts."""
    lines = ["| threads | runs | training CPU-s (median, min–max) | training wall s | command CPU-s | command wall s "
             "| wall ÷ training wall | val % (median) | test % (median, min) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for threads in sorted({int(r["threads"]) for r in rows}):
        group = [r for r in rows if r["threads"] == threads]

        def med(key: str, group: list[dict[str, float]] = group) -> float:
            return statistics.median(r[key] for r in group)

        cpu = [r["train_cpu_s"] for r in group]
        lines.append(f"| {threads} | {len(group)} | {med('train_cpu_s'):.2f} ({min(cpu):.2f}–{max(cpu):.2f}) | "
                     f"{med('train_s'):.2f} | {med('command_cpu_s'):.2f} | {med('command_s'):.2f} | "
                     f"{statistics.median(r['command_s'] / r['train_s'] for r in group):.2f} | "
                     f"{100 * med('val'):.2f} | {100 * med('test'):.2f}, {100 * min(r['test'] for r in group):.2f} |")
    one = [r for r in rows if r["threads"] == 1] or rows
    cpu_1 = statistics.median(r["train_cpu_s"] for r in one)
    worst = min(r["test"] for r in rows)
    ratio = statistics.median(r["command_s"] / r["train_s"] for r in rows)
    lines.append(f"\ntraining CPU-s on {int(one[0]['threads'])} thread(s), median: {cpu_1:.2f} (target ≤ "
                 f"{TARGET_CPU_S}: {_verdict(cpu_1 <= TARGET_CPU_S)}); test accuracy, minimum over {len(rows)} runs: "
                 f"{100 * worst:.2f}% (target ≥ {100 * TARGET_ACC:.1f}%: {_verdict(worst >= TARGET_ACC)}); command "
                 f"wall ÷ training wall, median: {ratio:.2f} (target ≤ {TARGET_WALL_RATIO} on an idle machine: "
                 f"{_verdict(ratio <= TARGET_WALL_RATIO)})")
    return "\n".join(lines)


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data", help="where MNIST is (prepared on first use)")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2, 3, 4], help="comma-separated seeds")
    parser.add_argument("--threads", type=_ints, default=[1, 2], help="comma-separated thread counts")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--json", type=Path, help="also write every run's row here")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fast-") as tmp:
        for seed in args.seeds:
            for threads in args.threads:
                rows.append(one_run(args.recipe, seed, threads, args.data_dir, Path(tmp), extra))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(f"--recipe {args.recipe}, seeds {args.seeds} x threads {args.threads}, each a fresh process; load average "
          f"(1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.2f}' for x in load_after)}; {os.cpu_count()} CPUs\n")
    print(report(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
