"""The serving load test runs end to end (bounded, loopback only) and reports req/s and p50/p99."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_serve.py"


@pytest.mark.slow
def test_bench_serve_reports_a_row_per_level(synthetic_run) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), str(synthetic_run.dir), "--concurrency", "1,2",
                          "--requests", "30", "--seconds", "20", "--warmup", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if re.match(r"\| \S+ \| \d+ \|", line)]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[2]) == 30 and cells[3] == "0"  # every request answered, none failed
        assert float(cells[4]) > 0 and 0 < float(cells[5]) <= float(cells[6])


ATTACK = SCRIPT.with_name("attack_serve.py")


@pytest.mark.slow
def test_attack_script_reports_each_phase_and_the_slow_connections(synthetic_run) -> None:
    out = subprocess.run([sys.executable, str(ATTACK), str(synthetic_run.dir), "--seconds", "2", "--flood", "4",
                          "--clients", "1", "--flood-side", "6000", "--slowloris", "4", "--drip", "0.5",
                          "--hold", "14", "--server-arg=--read-timeout", "--server-arg=2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| quiet")
            or line.startswith("| flood")}
    assert set(rows) == {"quiet", "flood 6000x6000 PNG"}
    assert "'413'" in rows["flood 6000x6000 PNG"]  # over the pixel budget: refused from the header
    assert "trickled headers: 2/2 closed" in out.stdout and "trickled body: 2/2 closed" in out.stdout
