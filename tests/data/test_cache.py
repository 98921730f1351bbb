"""The in-memory image-folder cache: its peak memory while building, and when ``cache: auto`` skips it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiontrain.config import DataConfig
from visiontrain.data import build_data

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cache.py"


@pytest.mark.slow
def test_building_the_cache_peaks_at_most_1_2x_its_size(tmp_path: Path) -> None:
    # Small JPEGs made into large cached images: a cache of ~100 MiB that decodes in seconds, so the memory
    # the build needs beyond the cache itself (a list of batches joined at the end was 2x) stands out.
    out = subprocess.run([sys.executable, str(BENCH), "--images", "600", "--photo", "96x72", "--side", "224",
                          "--folder", str(tmp_path / "photos")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[2].strip(): line for line in out.stdout.splitlines() if line.startswith("| this")}
    assert set(rows) == {"photos", "none"}
    for row in rows.values():
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 80  # MiB of cache: large enough for the ratio to mean something
        assert float(cells[5].rstrip("x")) <= 1.2, row


@pytest.fixture(scope="module")
def thousand_jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 tiny JPEGs in two classes: enough for ``cache: auto`` to measure instead of caching outright."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i in range(1000):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg")
    return root


@pytest.mark.parametrize(("augment", "epochs", "cached"), [
    ("photos", 1, False),  # one epoch: the cache's decoding is never paid back
    ("none", 10, True),  # nothing random after the cache: every later epoch is free
])
def test_cache_auto_caches_only_when_it_pays_back(thousand_jpegs: Path, capsys: pytest.CaptureFixture,
                                                  augment: str, epochs: int, cached: bool) -> None:
    cfg = DataConfig(name=str(thousand_jpegs), val_split=0.0, cache="auto", normalize="none",
                     transforms={"train": augment})
    bundle = build_data(cfg, 0, size=16, splits=("train",), epochs=epochs)
    lines = [line for line in capsys.readouterr().err.splitlines() if "cache auto" in line]
    assert len(lines) == 1  # the decision and its reason, one line
    verdict = "caching in memory" if cached else "streaming (caching would not pay back)"
    assert re.search(rf"cache auto: {re.escape(verdict)}: \d+ MiB, decoding 1,000 images once", lines[0]), lines[0]
    loader = bundle.loaders["train"]
    in_memory = not hasattr(loader, "dataset") or loader.images is not None
    assert in_memory is cached
