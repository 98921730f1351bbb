"""Dataset files in the exact on-disk formats torchvision downloads, written from arrays, for work offline.

Tests, the cookbook and the benchmarks need CIFAR and MNIST-style sets without the network, and they must be
read through the same code (torchvision's and visiontrain's) as the published files. So these write the real
formats byte for byte: CIFAR's batches are Python 2 ``cPickle`` output (protocol 2, byte-string keys, numpy 1
arrays rebuilt with ``_reconstruct``), MNIST/FashionMNIST/KMNIST are gzipped big-endian IDX files.

>>> import tempfile, numpy as np
>>> root = Path(tempfile.mkdtemp())
>>> made = write_cifar(root, per_file=2)
>>> sorted(made)[:2], made["test_batch"][0].shape
(['data_batch_1', 'data_batch_2'], (2, 3, 32, 32))
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_CIFAR_FILES = {False: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                        "batches.meta"),
                True: ("cifar-100-python", ["train"], "test", "meta")}


def _str(text: str) -> bytes:
    raw = text.encode("latin1")
    return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<I", len(raw))) + raw


def _int(v: int) -> bytes:
    return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v) if v < 65536 else b"J" + struct.pack("<i", v)


def _list(items: list[bytes]) -> bytes:
    return b"](" + b"".join(items) + b"e"


def _uint8_array(arr: np.ndarray) -> bytes:
    """An ndarray as Python 2 + numpy 1 pickled it (protocol 2): _reconstruct, then __setstate__."""
    data = np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    as_str = b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data))
    return b"".join([
        b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n", b"K\x00\x85", b"U\x01b", b"\x87R",
        b"(K\x01(", *(b"J" + struct.pack("<i", d) for d in arr.shape), b"t",
        b"cnumpy\ndtype\n", b"U\x02u1K\x00K\x01\x87R",
        b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
        b"\x89", as_str, data, b"tb",
    ])  # fmt: skip


def _py2_dict(pairs: list[tuple[str, bytes]]) -> bytes:
    return b"\x80\x02}(" + b"".join(_str(k) + v for k, v in pairs) + b"u."


def cifar_batch_bytes(images: np.ndarray, labels: list[int], name: str, cifar100: bool = False) -> bytes:
    """One CIFAR batch file: ``images`` uint8 N×3×32×32 (or N×3072), integer ``labels``."""
    labels = [int(v) for v in labels]
    key, extra = ("labels", [("batch_label", _str(f"batch {name}"))]) if not cifar100 else (
        "fine_labels", [("coarse_labels", _list([_int(v // 5) for v in labels])), ("batch_label", _str(name))])
    return _py2_dict([("data", _uint8_array(np.asarray(images).reshape(len(labels), 3072))),
                      (key, _list([_int(v) for v in labels])), *extra,
                      ("filenames", _list([_str(f"img_{i}.png") for i in range(len(labels))]))])


def cifar_meta_bytes(classes: list[str], cifar100: bool = False, per_batch: int = 10000) -> bytes:
    """CIFAR's meta file: the class names (CIFAR-100: fine names and 20 coarse ones)."""
    if cifar100:
        return _py2_dict([("fine_label_names", _list([_str(c) for c in classes])),
                          ("coarse_label_names", _list([_str(f"s{i}") for i in range(20)]))])
    return _py2_dict([("num_cases_per_batch", _int(per_batch)), ("label_names", _list([_str(c) for c in classes])),
                      ("num_vis", _int(3072))])


def write_cifar(root: str | Path, *, cifar100: bool = False, per_file: int = 4, seed: int = 0,
                classes: list[str] | None = None) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Every file torchvision's ``CIFAR10``/``CIFAR100`` reads, under ``root``, with random pixels.

    Labels cycle through the classes (every class in every file when ``per_file`` allows). Returns
    ``{file name: (images N×3×32×32, labels)}``.
    """
    folder_name, train_files, test_file, meta_file = _CIFAR_FILES[cifar100]
    classes = classes or ([f"c{i}" for i in range(100)] if cifar100 else CIFAR10_CLASSES)
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    made = {}
    for name in [*train_files, test_file]:
        images = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)
        labels = [i % len(classes) for i in range(per_file)]
        (folder / name).write_bytes(cifar_batch_bytes(images, labels, name, cifar100))
        made[name] = (images, labels)
    (folder / meta_file).write_bytes(cifar_meta_bytes(classes, cifar100, per_file))
    return made


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes (magic 0x08 type, then the number of dimensions)."""
    array = np.asarray(array)
    return struct.pack(f">{1 + array.ndim}I", 0x800 + array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_set(raw: str | Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """MNIST-style ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` in the folder ``raw``.

    ``splits`` maps ``"train"``/``"t10k"`` to (uint8 N×28×28 images, labels).
    """
    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in splits.items():
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            (raw / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(idx_bytes(array), mtime=0))
