"""CIFAR-10/100, Fashion-MNIST and KMNIST from tiny copies in their exact on-disk formats, offline.

CIFAR batches are written byte for byte as Python 2's cPickle wrote the real ones (protocol 2, byte-string
keys, numpy arrays via ``numpy.core.multiarray._reconstruct``) and read both by visiontrain's restricted
unpickler and by torchvision's own class, which must agree. MNIST-style sets are IDX files (gz or raw).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from visiontrain.config import DataConfig
from visiontrain.data import build_data
from visiontrain.data.sources import load_source, registered_name
from visiontrain.data.torchvision_sets import load_cifar, load_idx_set
from visiontrain.errors import DataError
from visiontrain.testing import CIFAR10_CLASSES, idx_bytes, write_cifar


def make_cifar(root: Path, cls: type = tvd.CIFAR10, n: int = 4, seed: int = 0) -> dict[str, tuple]:
    """Tiny copies of every file ``cls`` reads; returns {file: (images NCHW, labels)} and the class names."""
    cifar100 = cls is tvd.CIFAR100
    classes = [f"c{i}" for i in range(100)] if cifar100 else CIFAR10_CLASSES
    out: dict = write_cifar(root, cifar100=cifar100, per_file=n, seed=seed, classes=classes)
    out["classes"] = classes
    return out



def _bless(monkeypatch: pytest.MonkeyPatch, cls: type, root: Path) -> None:
    """Make torchvision's md5 lists match the tiny files, so its own class agrees to read them."""
    folder = root / cls.base_folder

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(cls, "train_list", [[n, md5(n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])})


@pytest.mark.parametrize("cls", [tvd.CIFAR10, tvd.CIFAR100])
def test_cifar_reads_like_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    made = make_cifar(tmp_path, cls)
    _bless(monkeypatch, cls, tmp_path)
    for train in (True, False):
        images, labels, classes = load_cifar(cls, tmp_path, train, download=False)
        ref = cls(str(tmp_path), train=train, download=False)  # torchvision's own reader, same files
        assert torch.equal(images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))
        assert labels.tolist() == ref.targets and classes == ref.classes == made["classes"]
        files = [n for n, _ in (cls.train_list if train else cls.test_list)]
        assert torch.equal(images, torch.from_numpy(np.concatenate([made[f][0] for f in files])))
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)


def test_cifar10_source_end_to_end(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    assert registered_name("CIFAR-10") == "cifar10" and registered_name("FashionMNIST") == "fashion_mnist"
    bundle = build_data(DataConfig(name="CIFAR10", dir=str(tmp_path), batch_size=4), 0)
    source = bundle.source
    assert source.name == "cifar10" and source.classes[0] == "airplane"
    counts = {k: len(v) for k, v in source.splits.items()}
    assert counts["train"] + counts["val"] == 20 and counts["val"] >= 1 and counts["test"] == 4
    assert bundle.prep.mean == (0.4914, 0.4822, 0.4465)  # published statistics with normalize: auto
    images, _ = next(iter(bundle.loaders["train"]))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8


def _payload_batch(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self) -> tuple:
            return os.system, (f"touch {marker}",)

    return pickle.dumps({"data": Payload(), "labels": [0]}, protocol=2)


def test_a_hostile_cifar_file_is_refused_without_running_it(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(_payload_batch(marker))
    with pytest.raises(DataError) as info:
        load_cifar(tvd.CIFAR10, tmp_path, train=True, download=False)
    assert "forbidden global" in str(info.value) and "data_batch_3" in str(info.value)
    assert not marker.exists()


def test_official_files_fall_back_to_torchvision_when_the_strict_reader_declines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = make_cifar(tmp_path)
    # Same content pickled by Python 3 (bytes via _codecs.encode): not what the real files hold.
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    images, labels = made["test_batch"]
    path.write_bytes(pickle.dumps({"data": images.reshape(len(images), 3072), "labels": labels}, protocol=2))
    with pytest.raises(DataError, match="forbidden global"):
        load_cifar(tvd.CIFAR10, tmp_path, train=False, download=False)
    _bless(monkeypatch, tvd.CIFAR10, tmp_path)  # now its md5 is "the published one": trusted
    got, got_labels, _ = load_cifar(tvd.CIFAR10, tmp_path, train=False, download=False)
    assert torch.equal(got, torch.from_numpy(images)) and got_labels.tolist() == labels


def test_missing_cifar_with_download_off_or_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="download is off"):
        load_cifar(tvd.CIFAR10, tmp_path, train=True, download=False)

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading cifar-10-python.tar.gz:\nno network")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)  # imported when used
    with pytest.raises(DataError) as info:
        load_source(DataConfig(name="cifar10", dir=str(tmp_path)), 0)
    message = str(info.value)
    assert "\n" not in message and "no network" in message and "machine with internet" in message


def make_idx_set(root: Path, cls: type, gz: bool, seed: int = 0) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    raw = root / cls.__name__ / "raw"
    raw.mkdir(parents=True)
    out = {}
    for train, prefix, n in ((True, "train", 12), (False, "t10k", 5)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}"
            (raw / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
        out[train] = (images, labels)
    return out


@pytest.mark.parametrize(("cls", "gz"), [(tvd.FashionMNIST, True), (tvd.KMNIST, False)])
def test_mnist_style_sets_read_by_torchvision(tmp_path: Path, cls: type, gz: bool) -> None:
    made = make_idx_set(tmp_path, cls, gz)
    for train in (True, False):
        images, labels, classes = load_idx_set(cls, tmp_path, train, download=False)
        assert torch.equal(images[:, 0], torch.from_numpy(made[train][0]))
        assert labels.tolist() == made[train][1].tolist() and classes == list(cls.classes)
    key = "fashion_mnist" if cls is tvd.FashionMNIST else "kmnist"
    source = load_source(DataConfig(name=key, dir=str(tmp_path), val_split=0.25), 0)
    assert source.channels == 1 and source.size == 28 and source.preset == "digits"
    counts = {k: len(v) for k, v in source.splits.items()}
    assert counts["train"] + counts["val"] == 12 and counts["val"] >= 2 and counts["test"] == 5


def test_mnist_style_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match=r"FashionMNIST: files not found .* download is off"):
        load_idx_set(tvd.FashionMNIST, tmp_path, True, download=False)

    def offline(self: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://…, got: no network")

    monkeypatch.setattr(tvd.FashionMNIST, "download", offline)
    with pytest.raises(DataError) as info:
        load_idx_set(tvd.FashionMNIST, tmp_path, True, download=True)
    assert "\n" not in str(info.value) and "no network" in str(info.value)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"not a readable \.gz"):
        load_idx_set(tvd.FashionMNIST, tmp_path, True, download=False)
