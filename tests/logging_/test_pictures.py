"""The pictures a run and a report write, checked for what a person sees: the caller's matplotlib backend left
alone, whole-number epoch ticks with a marker on every point, a mistakes grid whose title clears its captions,
confusion matrices that say which split and checkpoint they show, and class names in Chinese drawn in a font
that has their glyphs."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from visiontrain import fonts
from visiontrain.use.report import classification_metrics, reliability_figure, write_report
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
from visiontrain import fonts
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


@pytest.mark.parametrize("epochs", [2, 3, 7, 40])
def test_epoch_curves_tick_whole_epochs_and_mark_short_runs(epochs: int) -> None:
    x = list(range(1, epochs + 1))
    figure = plots.curve_figure(x, {"train/loss": [1 / e for e in x], "val/loss": [2 / e for e in x]}, "epoch", "loss",
                                integer_x=True)
    ax = figure.axes[0]
    lo, hi = ax.get_xlim()
    shown = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert len(shown) >= min(epochs, 2) and all(float(t).is_integer() for t in shown), shown
    markers = {line.get_marker() for line in ax.get_lines()}
    assert markers == ({"o"} if epochs <= 30 else {"None"})  # every measured point visible on a short run


def _extent(artist: Any, renderer: Any) -> Any:
    return artist.get_window_extent(renderer)


@pytest.mark.parametrize("count", [1, 3, 8, 9, 20])
def test_the_mistakes_title_clears_every_caption(count: int) -> None:
    captions = [f"true circle\npred square ({0.9:.2f})"] * count
    figure = plots.image_grid_figure(torch.zeros(count, 3, 16, 16, dtype=torch.uint8), captions,
                                     "most confident mistakes")
    renderer = FigureCanvasAgg(figure).get_renderer()
    (title,) = [t for t in figure.texts if t.get_text() == "most confident mistakes"]
    top = _extent(title, renderer)
    shown = [ax for ax in figure.axes if ax.get_title()]
    assert len(shown) == count
    for ax in shown:
        caption = _extent(ax.title, renderer)
        assert caption.y1 <= top.y0, (count, caption, top)  # the title sits above the first row's captions
        for other in figure.axes:  # and no caption runs into an image, its own or the row above's
            image = _extent(other, renderer)
            if other is ax:
                assert caption.y0 >= image.y1 - 1
            elif other.images:
                assert not caption.overlaps(image)


def test_the_run_confusion_matrices_name_split_epoch_and_checkpoint(synthetic_run) -> None:
    for name in ("confusion_matrix.png", "confusion_matrix_counts.png"):
        with Image.open(synthetic_run.dir / "plots" / name) as picture:
            title = picture.text["Title"]
        epochs = synthetic_run.summary["epochs_completed"]
        assert f"val split · epoch {epochs} · checkpoint last" in title, title


def _result(split: str = "test") -> dict[str, Any]:
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    targets = torch.tensor([0, 1, 1, 0])
    return {"checkpoint": "runs/demo/checkpoints/best.json", "data": "synthetic", "split": split, "tta": "none",
            "loss": 0.5, "classes": ["cat", "dog"], "probabilities": probabilities, "targets": targets,
            "confusion": [[1, 1], [1, 1]], "mistakes": None}


def test_the_report_confusion_matrices_name_split_and_checkpoint(tmp_path: Path) -> None:
    write_report(_result("val"), tmp_path)
    for name in ("confusion.png", "confusion_counts.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.text["Title"].endswith("\nval split · checkpoint demo/checkpoints/best")


def test_reliability_bars_show_accuracy_alone() -> None:
    result = _result()
    calibration = classification_metrics(result["probabilities"], result["targets"], result["classes"])["calibration"]
    filled = [b for b in calibration["bins"] if b["count"]]
    ax = reliability_figure(calibration).axes[0]
    # The only bars are the accuracies: the gap is a line to a confidence tick, never a bar stacked on them.
    assert sorted(p.get_height() for p in ax.patches) == pytest.approx(sorted(b["accuracy"] for b in filled))
    (ticks,) = [line for line in ax.get_lines() if line.get_marker() == "_"]
    assert sorted(ticks.get_ydata()) == pytest.approx(sorted(b["confidence"] for b in filled))


CJK = ["猫", "狗", "cat"]  # class names as the notes' readers write them


def test_cjk_class_names_are_drawn_in_a_font_that_has_them() -> None:
    font = fonts.fallback_font(CJK)
    if font is None:
        pytest.skip("no CJK font installed (.ci/run installs fonts-wqy-microhei)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.png_bytes(plots.confusion_figure([[2, 1, 0], [0, 3, 0], [1, 0, 2]], CJK))
        grid = plots.image_grid_figure(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), ["猫 → 狗", "狗 → 猫"], "mistakes")
        plots.png_bytes(grid)
    assert not [w for w in caught if "missing from font" in str(w.message)], [str(w.message) for w in caught]


# No CJK font at all: matplotlib's list and the system's forced empty in a process of its own.
_NO_FONT_SCRIPT = """
from matplotlib import font_manager
font_manager.fontManager.ttflist = [f for f in font_manager.fontManager.ttflist if f.name.startswith("DejaVu")]
font_manager.findSystemFonts = lambda *args, **kwargs: []
import torch
from visiontrain.watch import plots
for _ in range(2):
    plots.png_bytes(plots.confusion_figure([[1, 0], [0, 1]], ["猫", "狗"]))
    plots.png_bytes(plots.image_grid_figure(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ["猫 → 狗"], "mistakes"))
"""


@pytest.mark.slow  # a process of its own: ~5 s of imports
def test_without_a_cjk_font_one_line_says_how_to_install_one(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-W", "default", "-c", textwrap.dedent(_NO_FONT_SCRIPT)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr  # not one warning per glyph and picture
    assert "install a CJK font" in lines[0] and "apt install fonts-noto-cjk" in lines[0] and "猫" in lines[0]
