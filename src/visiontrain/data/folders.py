"""Folder-per-class trees (torchvision ``ImageFolder`` semantics): ``root/ants/*.jpg``, ``root/bees/*.jpg``.

Class names are the folder names, sorted. ``root/train``, ``root/val`` and ``root/test`` sub-trees are used
when present (a missing val split is held out of train by ``sources.load_source``). Hidden files, OS junk
(``.DS_Store``, ``Thumbs.db``) and non-image files are ignored; symlinked folders are followed once, so a
symlink loop ends the walk instead of recursing; every file's header is checked before training.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from visiontrain.config import DataConfig
from visiontrain.data.images import is_image_file
from visiontrain.data.scan import natural_shape, scan_files, skipped_note
from visiontrain.data.sources import DataSource, FileSplit, Split
from visiontrain.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SPLIT_NAMES = ("train", "val", "test")


def folder_source(root: Path, cfg: DataConfig, seed: int) -> DataSource:
    """A :class:`DataSource` of the class folders under ``root`` (or its train/val/test sub-trees)."""
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass a registered dataset name "
                        "(`visiontrain data list`) or a folder with one sub-folder per class")
    if not root.is_dir():
        raise DataError(f"data path {root} is a file, not a folder; pass a folder with one sub-folder per class")
    notes: list[str] = []
    bad: list[tuple[str, str]] = []
    if (root / "train").is_dir():
        classes, listed = list_class_files(root / "train", None, notes)
        lists = {"train": listed}
        for name in ("val", "test"):
            if (root / name).is_dir():
                lists[name] = list_class_files(root / name, classes, notes)[1]
    else:
        classes, listed = list_class_files(root, None, notes)
        lists = {"train": listed}
    splits: dict[str, Split] = {
        name: scan_files(paths, labels, cfg.bad_images, cfg.max_pixels, bad) for name, (paths, labels) in lists.items()
    }
    if len(splits["train"]) == 0:
        raise DataError(f"data folder {root}: none of its training images can be read ({bad[0][1]})")
    channels, side = natural_shape([s for s in splits.values() if isinstance(s, FileSplit)])
    preset = "photos" if side is None else ("cifar" if side <= 64 else "photos")
    return DataSource(root.name or str(root), classes, channels, side, splits, None, None,
                      notes + skipped_note(bad), preset=preset, root=root, bad_images=bad)


def list_class_files(root: Path, classes: list[str] | None,
                     notes: list[str]) -> tuple[list[str], tuple[list[Path], torch.Tensor]]:
    """Image files under each class folder of ``root``; with ``classes`` given, folders map onto those names."""
    try:
        entries = sorted(e.name for e in os.scandir(root) if e.is_dir() and not _hidden(e.name))
    except OSError as exc:
        raise DataError(f"data folder {root} cannot be listed: {exc.strerror or exc}") from None
    folders = [f for f in entries if classes is not None or f not in _SPLIT_NAMES]
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
    return (classes or found), (paths, torch.tensor(labels, dtype=torch.int64))


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
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        out += [Path(dirpath) / f for f in sorted(filenames) if is_image_file(f)]
    return out


def _hidden(name: str) -> bool:
    """Hidden folders and the resource-fork folder macOS puts into zip files are never classes or images."""
    return name.startswith(".") or name == "__MACOSX"
