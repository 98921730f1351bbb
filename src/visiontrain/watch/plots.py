"""Pictures people would rather look at than tables: confusion matrices, image grids, curves.

Each function returns a matplotlib :class:`~matplotlib.figure.Figure`: :func:`save_png` writes one atomically
and :func:`figure_image` renders one for TensorBoard. They are drawn on ``Figure`` objects directly, never through
``pyplot``, and the backend is never set: a notebook's or script's own matplotlib backend stays as it was, and
no display is needed on a server.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from visiontrain.fileio import atomic_write_bytes
from visiontrain.fonts import fallback_font, hinted


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    return atomic_write_bytes(path, png_bytes(fig, dpi))


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (closed afterwards), for files written together with others."""
    buf = io.BytesIO()
    # The picture's title as PNG metadata too: image viewers show it, and programs can read it back.
    title = fig.get_suptitle() or next((ax.get_title() for ax in fig.axes if ax.get_title()), "")
    with _fonts(fig):
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Title": title} if title else None)
    return buf.getvalue()


def figure_image(fig: Figure, dpi: int = 100) -> np.ndarray:
    """The figure as uint8 RGB pixels [H, W, 3] (TensorBoard's ``add_image`` with ``dataformats="HWC"``).

    Rendered on an Agg canvas of its own: ``SummaryWriter.add_figure`` would import ``pyplot`` to close it.
    """
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    with _fonts(fig):
        canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


@contextmanager
def _fonts(fig: Figure) -> Iterator[None]:
    """Lay out or draw ``fig`` with a CJK font as fallback on its own text when that text needs one
    (visiontrain.fonts). Without such a font, the one install hint replaces matplotlib's warning per missing
    glyph and picture."""
    texts = [t for t in fig.findobj(Text) if t.get_text()]
    font = fallback_font(t.get_text() for t in texts)
    if font is not None:
        for text in texts:
            families = text.get_fontfamily()
            if font.family not in families:
                text.set_fontfamily([*families, font.family])  # the usual font first, CJK for what it lacks
    with warnings.catch_warnings():
        if hinted():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        yield


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str], normalize: bool = True,
                     title: str = "confusion matrix", source: str = "", totals: Sequence[int] | None = None) -> Figure:
    """Rows are true classes, columns predictions; normalized rows show recall per class.

    ``totals`` divide the rows instead of their sums: multi-label counts, where an image adds to several cells
    of its row, are normalized by the images that have the row's label.

    ``source`` says what was counted — the split and the checkpoint, e.g. ``"val split · checkpoint last"`` —
    on a second line of the title: a matrix alone does not tell whether it shows the best or the last model.
    """
    counts = torch.tensor(confusion, dtype=torch.float64)
    divisor = counts.sum(dim=1, keepdim=True) if totals is None else torch.tensor(totals, dtype=torch.float64)[:, None]
    values = counts / divisor.clamp_min(1) if normalize else counts
    n = len(classes)
    side = min(14.0, 2.5 + 0.45 * n)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    image = ax.imshow(values.numpy(), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if not normalize:  # counts of images: whole numbers on the scale too
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ticks = range(n)
    ax.set_xticks(ticks, [c[:12] for c in classes], rotation=90 if n > 6 else 0)
    ax.set_yticks(ticks, [c[:12] for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} ({'row-normalized' if normalize else 'counts'})" + (f"\n{source}" if source else ""))
    if n <= 20:  # numbers stay legible up to about 20 classes
        threshold = float(values.max()) / 2
        for i in range(n):
            for j in range(n):
                v = values[i, j].item()
                text = f"{v:.2f}" if normalize else f"{int(v)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7 if n > 10 else 9,
                        color="white" if v > threshold else "black")
    with _fonts(fig):  # tight_layout measures the class names: in the font they will be drawn in
        fig.tight_layout()
    return fig


def image_grid_figure(images: torch.Tensor, captions: Sequence[str], title: str = "", columns: int = 8) -> Figure:
    """uint8 images [N,C,H,W] with a caption under each (e.g. 'true 7 / pred 1 (0.98)')."""
    n = len(images)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    # Laid out in inches, not in fractions of the figure: a one-row grid is short, and fractions that suit
    # three rows put the title over the captions there. Each row is an image with its caption above it.
    title_band = 0.4 if title else 0.05
    # The caption band holds as many lines as the longest caption: a one-line band under a title is no gap.
    band = _GRID_CAPTION_PAD + _GRID_CAPTION_LINE * max((c.count("\n") + 1 for c in captions), default=1)
    height = rows * (_GRID_IMAGE + band) + title_band + _GRID_MARGIN
    fig = Figure(figsize=(_GRID_CELL * cols, height))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        array = image.permute(1, 2, 0).cpu().numpy()
        ax.imshow(array.squeeze(-1) if array.shape[-1] == 1 else array, cmap="gray" if array.shape[-1] == 1 else None,
                  vmin=0, vmax=255)
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title, y=1 - 0.08 / height, va="top")
    # Fixed spacing, not tight_layout: measuring every caption's box costs more than drawing the grid.
    fig.subplots_adjust(left=0.02, right=0.98, bottom=_GRID_MARGIN / height,
                        top=1 - (title_band + band) / height, wspace=0.1,
                        hspace=band / _GRID_IMAGE)
    return fig


_GRID_CELL, _GRID_IMAGE, _GRID_MARGIN = 1.9, 1.7, 0.05  # inches
_GRID_CAPTION_PAD, _GRID_CAPTION_LINE = 0.12, 0.15  # inches: an 8-pt caption line and the space around the band


def pr_curves_figure(scores: torch.Tensor, targets: torch.Tensor, classes: list[str], thresholds: list[float],
                     source: str = "") -> Figure:
    """Precision against recall of every label, each with a dot where its decision threshold puts it."""
    from torchmetrics.functional.classification import binary_precision_recall_curve  # deferred: slow to import

    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    for j, name in enumerate(classes):
        if targets[:, j].sum() == 0:
            continue  # no positive image: no curve
        precision, recall, cuts = binary_precision_recall_curve(scores[:, j], targets[:, j].round().int())
        line = ax.plot(recall.numpy(), precision.numpy(), linewidth=1.5, label=name[:20])[0]
        at = int((cuts >= thresholds[j]).nonzero().min()) if (cuts >= thresholds[j]).any() else len(cuts) - 1
        ax.plot([float(recall[at])], [float(precision[at])], "o", color=line.get_color(), markersize=6)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall per label (dot: its threshold)" + (f"\n{source}" if source else ""))
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def curve_figure(x: Sequence[float], ys: dict[str, Sequence[float]], xlabel: str, ylabel: str, title: str = "",
                 log_x: bool = False, mark: tuple[float, str] | None = None, integer_x: bool = False) -> Figure:
    """Lines of ``ys`` against ``x``; ``integer_x`` (epochs) puts ticks on whole numbers only.

    Up to 30 points each point is marked too: a run of 2 or 3 epochs shows where its measurements are, not a
    straight line that looks measured all along.
    """
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    marker = "o" if len(x) <= 30 else None
    for label, y in ys.items():
        ax.plot(x, y, label=label, marker=marker, markersize=4)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log_x:
        ax.set_xscale("log")
    if mark is not None:
        ax.axvline(mark[0], color="tab:red", linestyle="--", label=mark[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
