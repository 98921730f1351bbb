"""Folder-per-class trees (torchvision ``ImageFolder`` semantics): ``root/ants/*.jpg``, ``root/bees/*.jpg``.

Class names are the folder names, sorted. ``root/train``, ``root/val`` and ``root/test`` sub-trees are used
when present, under any of their common names (:data:`SPLIT_FOLDERS`: ``valid/`` as fastai and Roboflow write
it, ``validation/``, ``testing/``, any case), and the run's first lines say which folder became which split (a
missing val split is held out of train by ``sources.load_source``). Hidden files, OS junk
(``.DS_Store``, ``Thumbs.db``) and non-image files are ignored; every file's header is checked before training.
Nothing outside the data root is read, and folder symlinks are followed only with ``--follow-symlinks``, never
in a loop or into another class's folder (the rules are in :mod:`visiontrain.data.links`).

With ``--data-arg multilabel=true`` the tree is a **multi-label** set: an image may sit in several class folders
(``cat/0001.jpg`` and ``dog/0001.jpg``), and copies with the same **content** (a hash of the file's bytes — not the
same file name, which two different photos may share) are one image with every folder's label
(:func:`merge_copies`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from visiontrain.config import DataConfig
from visiontrain.data.images import is_image_file
from visiontrain.data.links import LinkRules
from visiontrain.data.scan import natural_shape, scan_files, skipped_note
from visiontrain.data.types import DataSource, FileSplit, Split
from visiontrain.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The names a split's folder goes by beside train/, compared in lower case (Train/, Test/ as Windows tools write).
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
# At the top of a tree without a train folder these are not classes (and, without train/, not splits: noted).
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
    rules = LinkRules(root, cfg.follow_symlinks)
    found = split_folders(root)
    if found:
        layout = list(found.values())
        for folder in layout:
            rules.split_folder(folder, [f for f in layout if f != folder])
        _claim_classes(layout, rules)
        notes.append(_layout_note(found))
        classes, listed = list_class_files(found["train"], None, notes, rules)
        lists = {"train": listed}
        for name in ("val", "test"):
            if name in found:
                lists[name] = list_class_files(found[name], classes, notes, rules)[1]
    else:
        ignored = [f"{name}/" for name in _SPLIT_NAMES if (root / name).is_dir()]
        if ignored:
            notes.append(f"{', '.join(ignored)} in {root} ignored: split folders are read only beside a train/ "
                         "folder (the class folders at the top are the training set)")
        _claim_classes([root], rules)
        classes, listed = list_class_files(root, None, notes, rules)
        lists = {"train": listed}
    splits: dict[str, Split] = {
        name: scan_files(paths, labels, cfg.bad_images, cfg.max_pixels, bad) for name, (paths, labels) in lists.items()
    }
    if len(splits["train"]) == 0:
        raise DataError(f"data folder {root}: none of its training images can be read ({bad[0][1]})")
    task = "multilabel" if _multilabel_arg(cfg.args.get("multilabel", False)) else "classification"
    if task == "multilabel":
        splits = {name: merge_copies(split, len(classes)) for name, split in splits.items()}  # type: ignore[arg-type]
    channels, side = natural_shape([s for s in splits.values() if isinstance(s, FileSplit)])
    preset = "photos" if side is None else ("cifar" if side <= 64 else "photos")
    return DataSource(root.name or str(root), classes, channels, side, splits, None, None,
                      rules.note() + notes + skipped_note(bad), preset=preset, root=root, bad_images=bad,
                      skipped_links=rules.skipped, task=task)


def _multilabel_arg(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "false", "0", "no"):
        return text in ("true", "1", "yes")
    raise DataError(f"data arg multilabel must be true or false, not {value!r}")


def merge_copies(split: FileSplit, num_classes: int) -> FileSplit:
    """One row per distinct image content, labelled with every class folder a copy of it sits in (multi-hot
    float32 [N, K]); the first copy's path stands for it. Decided by a hash of the bytes, not by file names."""
    first: dict[tuple[int, str], int] = {}  # (size, digest) → row
    keep: list[int] = []
    rows: list[list[int]] = []
    for i, (path, label) in enumerate(zip(split.paths, split.labels.tolist(), strict=True)):
        key = _content_key(path)
        if key not in first:
            first[key] = len(keep)
            keep.append(i)
            rows.append([])
        rows[first[key]].append(int(label))
    targets = torch.zeros(len(keep), num_classes, dtype=torch.float32)
    for row, labels in enumerate(rows):
        targets[row, labels] = 1.0
    infos = [split.infos[i] for i in keep] if split.infos is not None else None
    return FileSplit([split.paths[i] for i in keep], targets, infos)


def _content_key(path: Path) -> tuple[int, str]:
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return os.path.getsize(path), digest.hexdigest()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read to match its copies in other class folders "
                        f"({exc.strerror or exc})") from None


def split_folders(root: Path) -> dict[str, Path]:
    """The split sub-trees of ``root`` by split (``{"train": root/"train", "val": root/"valid"}``), when it has a
    train folder; ``{}`` for a flat tree of class folders. Two folders for one split are a DataError."""
    found: dict[str, Path] = {}
    for split, matches in _split_matches(root).items():
        if len(matches) > 1:
            raise DataError(f"data folder {root} has {len(matches)} folders for the {split} split: "
                            f"{' and '.join(m + '/' for m in matches)}; keep one (merge the others into it)")
        found[split] = root / matches[0]
    return found if "train" in found else {}


def _split_matches(root: Path) -> dict[str, list[str]]:
    try:
        names = sorted(e.name for e in os.scandir(root) if _is_dir(e) and not _hidden(e.name))
    except OSError as exc:
        raise DataError(f"data folder {root} cannot be listed: {exc.strerror or exc}") from None
    matches = {split: [name for name in names if name.lower() in aliases] for split, aliases in SPLIT_FOLDERS.items()}
    return {split: found for split, found in matches.items() if found}


def class_folders_in(root: Path, most: int = 3) -> list[str]:
    """Up to ``most`` folders of ``root`` (or of its train folder) that hold image files: the sign of a user's
    dataset, which a registered dataset's download cache (``MNIST/raw/*.gz``, ``cifar-10-batches-py/``) is not."""
    if not root.is_dir():
        return []
    train = _split_matches(root).get("train")
    base = root / train[0] if train else root
    found = []
    for name in _class_folders(base, base == root):
        try:
            with os.scandir(base / name) as entries:
                if any(not _is_dir(e) and is_image_file(e.name) for e in entries):
                    found.append(str((base / name).relative_to(root)))
        except OSError:
            continue
        if len(found) == most:
            break
    return found


def _layout_note(found: dict[str, Path]) -> str:
    """``split folders: train/ → train, valid/ → val; no test folder (test/ or testing/)``."""
    used = ", ".join(f"{path.name}/ → {split}" for split, path in found.items())
    missing = [f"no {split} folder ({' or '.join(a + '/' for a in SPLIT_FOLDERS[split])})"
               for split in ("val", "test") if split not in found]
    return f"split folders: {used}" + (f"; {'; '.join(missing)}" if missing else "")


def list_class_files(root: Path, classes: list[str] | None, notes: list[str],
                     rules: LinkRules) -> tuple[list[str], tuple[list[Path], torch.Tensor]]:
    """Image files under each class folder of ``root``; with ``classes`` given, folders map onto those names."""
    folders = _class_folders(root, classes is None)
    if not folders:
        raise DataError(f"data folder {root} has no class sub-folders; put each class's images in "
                        f"{root}/<class name>/ (e.g. {root}/ants/1.jpg)")
    paths: list[Path] = []
    labels: list[int] = []
    found: list[str] = []
    for folder in folders:
        owner = f"{root.name}/{folder}"
        if (root / folder).is_symlink() and not rules.folder_link(root / folder, owner, set()):
            continue  # a class folder that is a refused symlink: not a class (counted in the note)
        files = _images_under(root / folder, owner, rules)
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


def _class_folders(root: Path, top: bool) -> list[str]:
    """Names of the class folders of ``root`` (at the top of a flat tree, the split names are not classes)."""
    try:
        entries = sorted(e.name for e in os.scandir(root) if _is_dir(e) and not _hidden(e.name))
    except OSError as exc:
        raise DataError(f"data folder {root} cannot be listed: {exc.strerror or exc}") from None
    return [f for f in entries if not top or f not in _SPLIT_NAMES]


def _claim_classes(split_roots: list[Path], rules: LinkRules) -> None:
    """Every real class folder, of every split, is its own: no other class's link may lead into it."""
    for split_root in split_roots:
        for name in _class_folders(split_root, False):
            if not (split_root / name).is_symlink():
                rules.claim(split_root / name, f"{split_root.name}/{name}")


def _images_under(folder: Path, owner: str, rules: LinkRules) -> list[Path]:
    """Image files below the class folder ``folder``: its real sub-folders first, depth first and sorted (as
    ``os.walk`` lists them), then the folder links met on the way, where the link rules allow."""
    walked: set[str] = set()
    links: list[Path] = []
    out = _walk(folder, walked, links, rules)
    while links:
        link = links.pop(0)
        if rules.folder_link(link, owner, walked):
            out += _walk(link, walked, links, rules)
    return out


def _walk(top: Path, walked: set[str], links: list[Path], rules: LinkRules) -> list[Path]:
    """Image files of ``top`` and its real sub-folders; folder links found are added to ``links``, not entered."""
    out: list[Path] = []
    stack = [top]
    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in walked:
            continue
        walked.add(real)
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue  # an unreadable sub-folder holds nothing usable (os.walk skips it the same way)
        folders = [e for e in entries if _is_dir(e) and not _hidden(e.name)]
        out += [current / e.name for e in entries if not _is_dir(e) and is_image_file(e.name)
                and (not e.is_symlink() or rules.file_link(current / e.name))]
        links += [current / e.name for e in folders if e.is_symlink()]
        stack += [current / e.name for e in reversed(folders) if not e.is_symlink()]
    return out


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop (ELOOP): not a folder; as a file, the header scan names it
        return False


def _hidden(name: str) -> bool:
    """Hidden folders and the resource-fork folder macOS puts into zip files are never classes or images."""
    return name.startswith(".") or name == "__MACOSX"
