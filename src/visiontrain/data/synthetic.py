"""A small learnable image set: coloured shapes on noisy backgrounds, generated with tensor ops.

Not random noise: the class (circle, square, triangle, cross) is visible in every image, so a small CNN
reaches high accuracy in seconds — which makes real end-to-end tests and demos possible offline.
"""

from __future__ import annotations

import torch

SHAPES = ("circle", "square", "triangle", "cross")


def make_shapes(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (uint8 [n, channels, size, size]) and balanced labels (int64 [n]), same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(SHAPES)
    labels = labels[torch.randperm(n, generator=gen)]
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # [S, S]

    def rand(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, 1, 1, generator=gen))

    r = rand(0.18, 0.32) * size
    cx = rand(0.35, 0.65) * size
    cy = rand(0.35, 0.65) * size
    dx, dy = xx - cx, yy - cy
    masks = torch.stack([
        dx**2 + dy**2 <= r**2,  # circle
        (dx.abs() <= r * 0.85) & (dy.abs() <= r * 0.85),  # square
        (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2),  # triangle, apex up
        ((dx.abs() <= r / 3.5) & (dy.abs() <= r)) | ((dy.abs() <= r / 3.5) & (dx.abs() <= r)),  # cross
    ], dim=1)  # [n, 4, S, S]
    mask = masks[torch.arange(n), labels].unsqueeze(1).float()  # [n, 1, S, S]

    background = torch.rand(n, 3, 1, 1, generator=gen) * 0.4
    colour = 0.6 + torch.rand(n, 3, 1, 1, generator=gen) * 0.4
    noise = torch.randn(n, 3, size, size, generator=gen) * 0.06
    images = (background * (1 - mask) + colour * mask + noise).clamp(0, 1)
    if channels == 1:
        images = images.mean(dim=1, keepdim=True)
    return (images * 255).round().to(torch.uint8), labels
