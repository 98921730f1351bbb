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
