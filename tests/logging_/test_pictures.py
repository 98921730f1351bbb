"""The pictures a run and a report write, checked for what a person sees: the caller's matplotlib backend left
alone, whole-number epoch ticks with a marker on every point, a mistakes grid whose title clears its captions,
confusion matrices that say which split and checkpoint they show, and class names in Chinese drawn in a font
that has their glyphs."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import pytest
import torch

from visiontrain.use.report import classification_metrics, reliability_figure
from visiontrain.watch import plots

# A notebook (or a script) has picked its matplotlib backend; importing visiontrain, training with pictures
# and writing a report must leave it as it was, and training must not load pyplot (which keeps every figure it
# makes until closed). torchmetrics, which the report uses, imports pyplot itself: the backend still holds.
_BACKEND_SCRIPT = """
import sys
from pathlib import Path
import matplotlib
matplotlib.use("svg")
import visiontrain
from visiontrain.use.report import write_report
run = visiontrain.train({"data": {"name": "synthetic", "batch_size": 32, "args": {"train": 64, "val": 32, "test": 32,
                                                                                  "size": 16}},
                         "train": {"epochs": 1}, "out": "runs", "name": "backend"}, quiet=True)
trained = matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules
write_report(visiontrain.evaluate(run.dir, outputs=True, mistakes=4), "report")
pictures = sorted(p.name for p in [*(run.dir / "plots").glob("*.png"), *Path("report").glob("*.png")])
print(*trained, matplotlib.get_backend(), " ".join(pictures))
"""


@pytest.mark.slow
def test_training_and_reports_leave_the_callers_backend_alone(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_BACKEND_SCRIPT)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    trained_backend, pyplot, reported_backend, pictures = done.stdout.split(maxsplit=3)
    assert (trained_backend, pyplot, reported_backend) == ("svg", "False", "svg")
    assert "confusion_matrix.png" in pictures and "reliability.png" in pictures and "loss.png" in pictures


@pytest.fixture
def svg_backend() -> Iterator[None]:
    """This process's backend set to svg, as a notebook sets its own, and put back afterwards."""
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        yield
    finally:
        matplotlib.use(before)


def test_drawing_every_picture_keeps_the_backend(svg_backend: None) -> None:
    importlib.reload(plots)  # what importing visiontrain's pictures does to a fresh process
    figures = [plots.confusion_figure([[3, 1], [0, 4]], ["a", "b"]),
               plots.image_grid_figure(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), ["x", "y"], "grid"),
               plots.curve_figure([1, 2], {"train/loss": [1.0, 0.5]}, "epoch", "loss"),
               reliability_figure(classification_metrics(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]),
                                                         ["a", "b"])["calibration"])]
    for figure in figures:
        assert plots.png_bytes(figure).startswith(b"\x89PNG")
        assert plots.figure_image(figure).ndim == 3
    assert matplotlib.get_backend() == "svg"
