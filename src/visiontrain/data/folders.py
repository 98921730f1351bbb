"""Folder-per-class trees (torchvision ``ImageFolder`` semantics): ``root/ants/*.jpg``, ``root/bees/*.jpg``.

``root/train``, ``root/val`` and ``root/test`` sub-trees are used when present (a missing val split is
held out of train by ``sources.load_source``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from visiontrain.config import DataConfig
from visiontrain.data.images import is_image_file
from visiontrain.data.sources import DataSource, FileSplit, Split
from visiontrain.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SPLIT_NAMES = ("train", "val", "test")


def folder_source(root: Path, cfg: DataConfig, seed: int) -> DataSource:
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass a registered dataset name "
                        "(`visiontrain datasets`) or a folder with one sub-folder per class")
    if not root.is_dir():
        raise DataError(f"data path {root} is a file, not a folder; pass a folder with one sub-folder per class")
    notes: list[str] = []
    if (root / "train").is_dir():
        classes, train = _scan(root / "train", None, notes)
        splits: dict[str, Split] = {"train": train}
        for name in ("val", "test"):
            if (root / name).is_dir():
                splits[name] = _scan(root / name, classes, notes)[1]
    else:
        classes, everything = _scan(root, None, notes)
        splits = {"train": everything}
    return DataSource(root.name or str(root), classes, 3, None, splits, IMAGENET_MEAN, IMAGENET_STD, notes)


def _scan(root: Path, classes: list[str] | None, notes: list[str]) -> tuple[list[str], FileSplit]:
    """Images under each class folder of ``root``; with ``classes`` given, folders map onto those names."""
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if classes is None:
        folders = [f for f in folders if f not in _SPLIT_NAMES]
    if not folders:
        raise DataError(f"data folder {root} has no class sub-folders; put each class's images in "
                        f"{root}/<class name>/ (e.g. {root}/ants/1.jpg)")
    paths: list[Path] = []
    labels: list[int] = []
    found: list[str] = []
    for folder in folders:
        files = _images_under(root / folder)
        if not files:
            notes.append(f"class folder {root / folder} has no images; skipped")
            continue
        if classes is not None and folder not in classes:
            raise DataError(f"{root / folder}: class {folder!r} is not among the training classes "
                            f"({', '.join(classes)}); rename or remove it")
        found.append(folder)
        index = classes.index(folder) if classes is not None else len(found) - 1
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise DataError(f"data folder {root} has no images (.jpg .png .bmp .webp .gif .tif) in its "
                        "class sub-folders")
    return (classes or found), FileSplit(paths, torch.tensor(labels, dtype=torch.int64))


def _images_under(folder: Path) -> list[Path]:
    """Image files below ``folder``, recursively, sorted; symlinked folders followed once (no loops)."""
    seen: set[str] = set()
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if is_image_file(f)]
    return out
