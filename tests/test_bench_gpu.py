"""benchmarks/gpu.py runs end to end at tiny sizes on the CPU, so that it cannot rot before a GPU runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_prints_one_row_per_figure_at_tiny_sizes() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    values = {cells[0]: cells[1] for cells in ([c.strip() for c in row.strip("|").split("|")] for row in rows)}
    for what in ("MNIST `--recipe fast` on cpu", "CIFAR-shaped img/s: airbench-style loop (reference)",
                 "CIFAR-shaped img/s: `visiontrain --recipe cifar_gpu`", "resnet18 32 px training img/s: visiontrain",
                 "JPEG decode img/s, CPU (`decode_jpeg`, 1 thread)"):
        row = next((v for k, v in values.items() if k.startswith(what)), None)
        assert row is not None and row not in ("FAILED", "skipped"), (what, out.stdout)
    assert "÷ reference = " in out.stdout  # the CIFAR ratio is computed
