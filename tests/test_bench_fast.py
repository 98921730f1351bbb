"""The speed benchmarks cannot rot: benchmarks/bench_fast.py (time to 99% over seeds x threads) runs end to end on
a tiny synthetic set, and both it and benchmarks/bench_startup.py judge their targets on CPU-seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bench_fast  # noqa: E402
import bench_startup  # noqa: E402


def _row(seed: int, threads: int, cpu: float, test: float) -> dict[str, float]:
    return {"seed": seed, "threads": threads, "train_cpu_s": cpu, "train_s": cpu * 1.5, "command_cpu_s": cpu + 5,
            "command_s": cpu * 2.5, "val": test - 0.002, "test": test}


def test_fast_report_judges_one_thread_cpu_and_the_worst_seed() -> None:
    rows = [_row(0, 1, 2.5, 0.9931), _row(0, 2, 3.5, 0.9925), _row(1, 1, 2.9, 0.9913), _row(1, 2, 3.6, 0.9899)]
    text = bench_fast.report(rows)
    one = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert "| 2 | 2.70 (2.50–2.90) |" in one and "99.22, 99.13 |" in one  # median CPU-s, test median and min
    assert "training CPU-s on 1 thread(s), median: 2.70 (target ≤ 3.0: met)" in text
    assert "minimum over 4 runs: 98.99% (target ≥ 99.0%: NOT met)" in text  # seed 1 on 2 threads
    assert "command wall ÷ training wall, median: 1.67" in text


def test_startup_report_divides_cpu_time_by_the_reference_script() -> None:
    times = {bench_startup.REFERENCE: [(4.0, 9.0), (4.4, 9.5), (4.2, 8.0)],
             "visiontrain --help": [(0.2, 0.4)] * 3, "visiontrain predict RUN one.png": [(5.2, 11.0)] * 3}
    text = bench_startup.report(times)
    assert "| visiontrain predict RUN one.png | 5.20 | 5.20–5.20 | 11.00 | 1.24x |" in text
    assert "--help 0.05x (target ≤ 0.6x: met); predict 1.24x (target ≤ 1.2x: NOT met)" in text


@pytest.mark.slow
def test_bench_fast_runs_end_to_end_on_synthetic_data(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_fast.py"), "--seeds", "0", "--threads", "1",
                           "--json", str(out), "--", "--data", "synthetic", "--data-arg", "train=64", "--data-arg",
                           "val=16", "--data-arg", "test=16", "--image-size", "16"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())
    assert row["threads"] == 1 and 0 < row["train_cpu_s"] <= row["command_cpu_s"] and 0 <= row["test"] <= 1
    assert "training CPU-s on 1 thread(s), median:" in proc.stdout and "load average" in proc.stdout
