"""``visiontrain data show``: a labelled grid of (augmented) samples as a PNG and in TensorBoard.

The notes do this by hand (``writer.add_images("input", imgs, step)``: docs/cookbook.md §1, tensorboard, and §3,
datasets and the DataLoader); here one command shows exactly what
the model will see — the same loaders, the same transforms — with each image's class written under it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from visiontrain.fileio import atomic_write_bytes
from visiontrain.fonts import fallback_font

_MIN_TILE = 96  # small images (MNIST's 28 px) are enlarged, pixel for pixel, to at least this side
_STRIP = 16  # label strip height under each image, in pixels


def labelled_grid(images: torch.Tensor, labels: list[str]) -> Image.Image:
    """uint8 [N,C,H,W] images and their labels → one RGB PIL image: tiles with the label under each."""
    images = images.to("cpu")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    scale = max(1, math.ceil(_MIN_TILE / max(images.shape[-2:])))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    font = _font(labels)
    tiles = []
    for image, label in zip(images, labels, strict=True):
        tile = Image.new("RGB", (image.shape[-1], image.shape[-2] + _STRIP), (255, 255, 255))
        tile.paste(Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()), (0, 0))
        draw = ImageDraw.Draw(tile)
        draw.text((3, image.shape[-2] + 2), _fit(draw, label, font, image.shape[-1] - 6), fill=(0, 0, 0), font=font)
        tiles.append(torch.from_numpy(np.array(tile, dtype=np.uint8)).permute(2, 0, 1))
    nrow = max(1, math.ceil(math.sqrt(len(tiles))))
    grid = make_grid(torch.stack(tiles), nrow=nrow, padding=4, pad_value=200)
    return Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy())


def _font(labels: list[str]) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    cjk = fallback_font(labels)  # class names in Chinese, Japanese, Korean: a font that has them, when installed
    if cjk is not None:
        try:
            return ImageFont.truetype(str(cjk.path), 12)
        except OSError:
            pass  # unreadable after all: the default font, boxes and all
    try:
        return ImageFont.load_default(size=12)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
         width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def save_grid(images: torch.Tensor, labels: list[str], out: Path, name: str, tag: str) -> tuple[Path, Path]:
    """Write ``<out>/<name>.png`` and the same images (plus the labelled grid) as TensorBoard events in ``out``."""
    from torch.utils.tensorboard import SummaryWriter  # heavy: only when a grid is written

    out.mkdir(parents=True, exist_ok=True)
    grid = labelled_grid(images, labels)
    png = out / f"{name}.png"
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    atomic_write_bytes(png, buffer.getvalue())
    writer = SummaryWriter(log_dir=str(out))
    try:
        flat = images.reshape(-1, *images.shape[-3:]).to("cpu")
        writer.add_images(tag, flat, 0, dataformats="NCHW")  # uint8: shown as is
        writer.add_image(f"{tag}_labelled", torch.from_numpy(np.array(grid, dtype=np.uint8)), 0, dataformats="HWC")
    finally:
        writer.close()
    return png, out
