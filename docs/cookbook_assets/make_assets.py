"""Make the small data files the cookbook's recipes read, in the formats the real ones have.

    python docs/cookbook_assets/make_assets.py [FOLDER]        (default: the current folder)

writes, from a fixed seed and without any download:

    hymenoptera_data/{train,val}/{ants,bees}/*.jpg   the notes' ants/bees photos, one folder per class (drawn:
                                                     dark ants on sand, striped yellow bees on leaves)
    img/bee.png                                      an RGBA PNG (4 channels), like the notes' airplane.png
    img/triangle.png                                 an RGBA PNG of a synthetic-style triangle
    data/cifar-10-batches-py/                        CIFAR-10 exactly as torchvision downloads it (Python 2
                                                     pickles), 10 random images per batch file
    data/FashionMNIST/raw/*-ubyte.gz                 Fashion-MNIST IDX files, 200 train / 50 test images
    regression/*.png, regression.csv                 a `path,value` manifest: brightness x, value 3x + 0.8

tests/test_cookbook.py runs this in an empty folder before it runs the cookbook's blocks there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from visiontrain.testing import write_cifar, write_idx_set


def _blob(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _insect(kind: str, rng: np.random.Generator) -> Image.Image:
    """A landscape or portrait 'photo': ants are three dark segments on sand, bees striped yellow on green."""
    h, w = (60, 80) if rng.random() < 0.5 else (80, 60)
    ground = (200, 180, 130) if kind == "ants" else (70, 130, 60)
    img = np.empty((h, w, 3), np.float32)
    img[:] = ground
    img += rng.normal(0, 12, (h, w, 3))
    cy, cx, s = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6), min(h, w) * rng.uniform(0.12, 0.18)
    if kind == "ants":
        for dx in (-1.6, 0.0, 1.6):
            img[_blob(h, w, cy, cx + dx * s, s * 0.7, s * 0.8)] = (35, 20, 15)
    else:
        body = _blob(h, w, cy, cx, s * 1.2, s * 2.0)
        stripes = (np.arange(w)[None, :] // max(2, int(s / 2))) % 2 == 0
        img[body] = (235, 190, 30)
        img[body & np.broadcast_to(stripes, (h, w))] = (20, 20, 20)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def make_hymenoptera(root: Path, train: int = 16, val: int = 6, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for kind in ("ants", "bees"):
            folder = root / "hymenoptera_data" / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _insect(kind, rng).save(folder / f"{kind[:-1]}_{i:03d}.jpg", quality=90)
    bee = _insect("bees", rng).convert("RGBA")
    (root / "img").mkdir(exist_ok=True)
    bee.save(root / "img" / "bee.png")
    triangle = np.zeros((32, 32, 4), np.uint8)  # dark noisy background, bright triangle: synthetic's style
    triangle[..., :3] = rng.integers(20, 60, (32, 32, 3))
    triangle[..., 3] = 255
    yy, xx = np.mgrid[0:32, 0:32]
    inside = (yy >= 8) & (yy <= 24) & (np.abs(xx - 16) <= (yy - 8) / 2)
    triangle[inside, :3] = (240, 200, 90)
    Image.fromarray(triangle, "RGBA").save(root / "img" / "triangle.png")


def make_cifar10(root: Path, per_batch: int = 10, seed: int = 0) -> None:
    """CIFAR-10 in torchvision's exact on-disk format (Python 2 pickles), random pixels: visiontrain.testing."""
    write_cifar(root / "data", per_file=per_batch, seed=seed)


def make_fashion_mnist(root: Path, train: int = 200, test: int = 50, seed: int = 0) -> None:
    """IDX files whose ten classes are learnable: class k is a bright bar at height 2k+4 on noise."""
    rng = np.random.default_rng(seed)
    raw = root / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 4: 2 * k + 7, 4:24] = 230
        write_idx_set(raw, {prefix: (images, labels)})


def make_regression(root: Path, n: int = 120, seed: int = 0) -> None:
    """The notes' y = 3x + 0.8, as images: x is the brightness of a 16x16 gray image."""
    rng = np.random.default_rng(seed)
    folder = root / "regression"
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,value"]
    for i in range(n):
        x = float(rng.random())
        pixels = np.clip(x * 255 + rng.normal(0, 4, (16, 16)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"{i:03d}.png")
        rows.append(f"regression/{i:03d}.png,{3 * x + 0.8:.4f}")
    (root / "regression.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def main(folder: str = ".") -> None:
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    make_hymenoptera(root)
    make_cifar10(root)
    make_fashion_mnist(root)
    make_regression(root)


if __name__ == "__main__":
    main(*sys.argv[1:2])
