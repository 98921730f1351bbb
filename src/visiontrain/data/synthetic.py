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


MULTI_SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")


def make_multi_shapes(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images with 2–4 different shapes each, one per quadrant, and their multi-hot labels (float32 [n, 6]
    over :data:`MULTI_SHAPES`); the same for the same seed. A small CNN learns every label in seconds."""
    gen = torch.Generator().manual_seed(seed)
    k = len(MULTI_SHAPES)
    count = torch.randint(2, 5, (n,), generator=gen)  # 2..4 shapes
    kinds = torch.rand(n, k, generator=gen).argsort(dim=1)[:, :4]  # 4 distinct shapes; the first `count` are drawn
    cells = torch.rand(n, 4, generator=gen).argsort(dim=1)  # which quadrant each of them takes
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    half = size / 2
    labels = torch.zeros(n, k, dtype=torch.float32)
    background = torch.rand(n, 3, 1, 1, generator=gen) * 0.4
    images = background.expand(n, 3, size, size).clone()
    for slot in range(4):
        on = (slot < count).float().view(n, 1, 1)
        cell = cells[:, slot]
        r = (0.26 + 0.1 * torch.rand(n, generator=gen)).view(n, 1, 1) * half
        cx = ((cell % 2).float() * half + half / 2 + (torch.rand(n, generator=gen) - 0.5) * half * 0.2).view(n, 1, 1)
        cy = ((cell // 2).float() * half + half / 2 + (torch.rand(n, generator=gen) - 0.5) * half * 0.2).view(n, 1, 1)
        dx, dy = xx - cx, yy - cy
        shapes = torch.stack([
            dx**2 + dy**2 <= r**2,  # circle
            (dx.abs() <= r * 0.85) & (dy.abs() <= r * 0.85),  # square
            (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2),  # triangle, apex up
            ((dx.abs() <= r / 3.5) & (dy.abs() <= r)) | ((dy.abs() <= r / 3.5) & (dx.abs() <= r)),  # cross
            (dx**2 + dy**2 <= r**2) & (dx**2 + dy**2 >= (r * 0.55) ** 2),  # ring
            (dx.abs() <= r) & (dy.abs() <= r / 3.5),  # bar
        ], dim=1)  # [n, k, S, S]
        kind = kinds[:, slot]
        shape = shapes[torch.arange(n), kind].float() * on  # [n, S, S]
        colour = 0.6 + torch.rand(n, 3, 1, 1, generator=gen) * 0.4
        images = images * (1 - shape.unsqueeze(1)) + colour * shape.unsqueeze(1)
        labels[torch.arange(n), kind] = torch.maximum(labels[torch.arange(n), kind], on.view(n))
    images = (images + torch.randn(n, 3, size, size, generator=gen) * 0.06).clamp(0, 1)
    if channels == 1:
        images = images.mean(dim=1, keepdim=True)
    return (images * 255).round().to(torch.uint8), labels
