"""torchvision's CIFAR-10/100, Fashion-MNIST and KMNIST, held in memory as uint8 tensors.

Files live where torchvision puts them under ``--data-dir`` (``cifar-10-batches-py/``,
``FashionMNIST/raw/``…). When they are missing and ``download`` is on, torchvision's own download (with its
md5 checks) fetches them; with files present nothing touches the network.

CIFAR's files are Python pickles, and unpickling can run code. They are read with an unpickler that builds
only what the real files contain (dicts, lists, strings, numpy arrays) and refuses anything else, so even
a tampered file in the data folder cannot run code. Only if that reader fails on a file whose md5 matches
torchvision's published one is torchvision's own (plain pickle) reader used: that file is the official one.
The MNIST-style sets are IDX files (no pickle); ``.gz`` copies are unpacked next to them first.
"""

from __future__ import annotations

import contextlib
import gzip
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visiontrain.config import DataConfig
from visiontrain.data.arrays import load_array_pickle
from visiontrain.data.types import DataSource, Split, TensorSplit, register_dataset
from visiontrain.errors import DataError
from visiontrain.fileio import atomic_write_bytes, user_path

# Published per-channel statistics (normalize: auto); `normalize: dataset` computes them instead.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "kmnist": ((0.1918,), (0.3483,)),
}


def safe_unpickle(path: Path) -> Any:
    """Read a CIFAR pickle (written by Python 2) without ever running code from it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        return load_array_pickle(data)
    except Exception as exc:  # safe to catch broadly: only numpy code can have run, and the file is bad
        raise DataError(f"{path}: not a readable CIFAR batch file ({type(exc).__name__}: {exc}); delete the "
                        "folder and download again, or copy the original files") from None


def _download(what: str, run: Callable[[], None], where: Path) -> None:
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints "Downloading …" to stdout, the result's
            run()
    except Exception as exc:  # no internet, a proxy, a bad md5: one line with the way out
        text = " ".join(str(exc).split())
        raise DataError(f"{what}: files missing in {where} and the download failed ({type(exc).__name__}: {text}); "
                        "copy the files there or run once on a machine with internet") from None


def load_cifar(cls: type, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images uint8 [N,3,32,32], labels int64 [N], class names) of a CIFAR split under ``root``."""
    folder = root / cls.base_folder
    files = [name for name, _ in (cls.train_list if train else cls.test_list)]
    needed = [folder / name for name in [*files, cls.meta["filename"]]]
    if not all(p.is_file() for p in needed):
        if not download:
            raise DataError(f"{cls.__name__}: files not found in {folder} and download is off; copy the "
                            f"{cls.base_folder} folder there or allow downloading (data.download: true)")
        from torchvision.datasets.utils import download_and_extract_archive

        _download(cls.__name__, lambda: download_and_extract_archive(cls.url, str(root), filename=cls.filename,
                                                                      md5=cls.tgz_md5), folder)
    try:
        parts = [_cifar_batch(folder / name) for name in files]
        classes = _cifar_meta(folder / cls.meta["filename"], cls.meta["key"])
    except DataError:
        if not _official(cls, root):
            raise
        dataset = cls(str(root), train=train, download=False)  # md5-verified official files: torchvision's reader
        images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
        return images, torch.tensor(dataset.targets, dtype=torch.int64), list(dataset.classes)
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = torch.tensor([v for p in parts for v in p[1]], dtype=torch.int64)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
        raise DataError(f"{folder}: labels outside 0..{len(classes) - 1}; the files do not belong together")
    return torch.from_numpy(np.ascontiguousarray(images)), labels, classes


def _cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    entry = safe_unpickle(path)
    labels = entry.get("labels", entry.get("fine_labels")) if isinstance(entry, dict) else None
    data = entry.get("data") if isinstance(entry, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be a uint8 array of N x 3072 (32x32 RGB), got "
                        f"{getattr(data, 'dtype', type(data).__name__)}{getattr(data, 'shape', '')}")
    if not isinstance(labels, list) or len(labels) != len(data):
        raise DataError(f"{path}: needs one label per image ({len(data)}), got {type(labels).__name__}")
    return data, [int(v) for v in labels]


def _cifar_meta(path: Path, key: str) -> list[str]:
    meta = safe_unpickle(path)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: no list of class names under {key!r}")
    return names


def _official(cls: type, root: Path) -> bool:
    folder = root / cls.base_folder
    from torchvision.datasets.utils import check_integrity

    files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
    return all(check_integrity(str(folder / name), md5) for name, md5 in files)


def load_idx_set(cls: type, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images uint8 [N,1,28,28], labels, class names) of an MNIST-format set, read by torchvision."""
    raw = root / cls.__name__ / "raw"
    _gunzip_missing(raw, [url for url, _ in cls.resources])
    present = all((raw / Path(url).stem).is_file() for url, _ in cls.resources)
    if not present and not download:
        raise DataError(f"{cls.__name__}: files not found in {raw} and download is off; copy its four IDX files "
                        "(.gz or unpacked) there or allow downloading (data.download: true)")
    if not present:
        _download(cls.__name__, lambda: cls(str(root), train=train, download=True), raw)
    try:
        dataset = cls(str(root), train=train, download=False)
    except Exception as exc:  # torchvision's parser on a damaged file: name the folder, one line
        raise DataError(f"{raw}: cannot read the {cls.__name__} IDX files ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())}); delete them and download again") from None
    data, targets = dataset.data, dataset.targets
    if data.dim() != 3 or len(data) != len(targets):
        raise DataError(f"{raw}: {len(data)} images but {len(targets)} labels")
    return data.unsqueeze(1).contiguous(), targets.to(torch.int64), list(cls.classes)


def _gunzip_missing(raw: Path, names: list[str]) -> None:
    """Unpack ``X.gz`` to ``X`` where only the archive is there (torchvision reads the unpacked files)."""
    for name in names:
        target = raw / Path(name).stem
        archive = raw / Path(name).name
        if not target.exists() and archive.is_file():
            try:
                atomic_write_bytes(target, gzip.decompress(archive.read_bytes()))
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise DataError(f"{archive}: not a readable .gz file ({exc}); copy it again") from None


def _source(key: str, class_name: str, loader: Callable, channels: int, size: int, preset: str) -> Callable:
    def build(cfg: DataConfig, seed: int) -> DataSource:
        if cfg.args:
            raise DataError(f"dataset {key!r} takes no data args (got {sorted(cfg.args)[0]!r})")
        # torchvision (~2 CPU-s: it loads torch._dynamo) only once one of its sets is used, so that registering
        # them costs nothing to the commands that never do (predict, evaluate of another set)
        import torchvision.datasets

        cls = getattr(torchvision.datasets, class_name)
        root = user_path(cfg.dir)
        splits: dict[str, Split] = {}
        classes: list[str] = []
        for split, train in (("train", True), ("test", False)):
            images, labels, classes = loader(cls, root, train, cfg.download)
            splits[split] = TensorSplit(images, labels)
        mean, std = STATS[key]
        return DataSource(key, classes, channels, size, splits, mean, std, preset=preset)

    return build


_SETS = [
    ("cifar10", "CIFAR10", load_cifar, 3, 32, "cifar",
     "CIFAR-10: 32x32 colour photos, 10 classes, 50k train / 10k test (torchvision download)"),
    ("cifar100", "CIFAR100", load_cifar, 3, 32, "cifar",
     "CIFAR-100: 32x32 colour photos, 100 classes, 50k train / 10k test (torchvision download)"),
    ("fashion_mnist", "FashionMNIST", load_idx_set, 1, 28, "digits",
     "Fashion-MNIST: 28x28 gray clothing, 10 classes, 60k train / 10k test (torchvision download)"),
    ("kmnist", "KMNIST", load_idx_set, 1, 28, "digits",
     "Kuzushiji-MNIST: 28x28 gray cursive Japanese, 10 classes, 60k train / 10k test (torchvision download)"),
]
for _key, _cls, _loader, _channels, _size, _preset, _text in _SETS:
    register_dataset(_key, _text)(_source(_key, _cls, _loader, _channels, _size, _preset))
