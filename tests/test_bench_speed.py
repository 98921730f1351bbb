"""The speed benchmarks of issue 18 run end to end on a tiny MNIST (so that they cannot rot): every peer in its own
process with CPU-seconds and page faults (bench_engine), and --recipe fast beside busy processes (bench_busy)."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def write_tiny_mnist(root: Path, train: int = 192, test: int = 64) -> Path:
    """Random digits in MNIST's IDX files: what torchvision's MNIST and visiontrain's loader both read."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        (raw / f"{stem}-images-idx3-ubyte").write_bytes(struct.pack(">4I", 0x803, n, 28, 28) + images.tobytes())
        (raw / f"{stem}-labels-idx1-ubyte").write_bytes(struct.pack(">2I", 0x801, n) + labels.tobytes())
    return root


def _run(script: str, *args: str | Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_bench_engine_runs_every_peer_in_its_own_process(tmp_path: Path) -> None:
    data = write_tiny_mnist(tmp_path / "data")
    out = _run("bench_engine.py", "--data-dir", data, "--repeats", "1", "--peers", "seeds,bare,lightning,visiontrain")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (\w+) \| [\d,]+ \| .*$", out.stdout, re.M)}
    assert set(rows) == {"seeds", "bare", "lightning", "visiontrain"}
    for name, row in rows.items():
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) >= 0 and float(cells[5]) > 0  # loop (3 steps: may round to 0.0) and process CPU-s
        assert cells[4].endswith(" M") and cells[7].endswith(" M")  # minor faults
        assert bool(re.fullmatch(r"[\d.]+x, [\d.]+x, [\d.]+x", cells[11])) == (name != "visiontrain")
    assert out.stderr.count("round 1") == 4  # one fresh process per peer


@pytest.mark.slow
def test_bench_busy_compares_torch_threads_and_auto_beside_busy_processes(tmp_path: Path) -> None:
    data = write_tiny_mnist(tmp_path / "data", train=256)
    out = _run("bench_busy.py", "--data-dir", data, "--repeats", "1", "--busy", "1", "--train-arg=--batch-size",
               "--train-arg=64")
    rows = [line for line in out.stdout.splitlines() if re.match(r"\| (torch|auto) \| (alone|busy) \|", line)]
    assert len(rows) == 4
    assert any("(torch's choice)" in row for row in rows) and any("(auto" in row for row in rows)
    assert sum("x: met" in row or "x: MISSED" in row for row in rows) == 2  # each mode's busy ÷ alone
    assert "alone: auto ÷ torch" in out.stdout
