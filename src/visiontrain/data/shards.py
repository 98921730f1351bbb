"""Sharded datasets: WebDataset ``.tar`` shards written by ``visiontrain data pack``, read by ``--data shards:OUT/``.

A packed folder holds ``<split>-NNNNNN.tar`` shards — ``<key>.jpg``/``<key>.png`` and ``<key>.cls`` (or
``<key>.json`` for multi-label and regression targets) per sample, the WebDataset layout, readable by the
``webdataset`` library and by plain ``tar`` — and ``index.json``, written last (so a pack killed half-way never
looks complete): every shard with its size, SHA-256 and members (byte offset, size, label), counts per class and
split, the class names and what the source said about its images (channels, natural size, preset, statistics).

Reading goes through the index, not through a tar reader: a sample is ``os.pread(shard, size, offset)`` — no
header walk, no decoding to skip, so a resumed run jumps to any position of an epoch at once and every DataLoader
worker reads exactly the members of its own batches. (The ``webdataset`` library reads shards as one stream per
worker: its order would depend on the worker count and could only resume by reading the epoch up to the point.)
The bytes are decoded by the project's guarded decoder (:func:`visiontrain.data.images.open_image`: formats,
pixel limits, bomb checks); shards are data only: a member that is not a ``.jpg``/``.png`` image (``.pth``,
``.pyd``: pickles) is refused when the index is read, and nothing is ever unpickled.

The training order of an epoch (:func:`shard_order`) is a function of (seed, epoch) only: the shards in a seeded
random order, their members in sequence, then shuffled within a sliding window of ``shuffle_buffer`` samples (each
sample moves less than a buffer's length: the reads stay near a few shards at a time). It does not depend on the
worker or process count, so the sample-stream fingerprint of a resumed run is computed from the index alone.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from visiontrain.config import DataConfig
from visiontrain.data.images import DEFAULT_MAX_PIXELS, open_image
from visiontrain.data.types import DataSource
from visiontrain.errors import DataError
from visiontrain.fileio import user_path
from visiontrain.limits import MAX_CLASSES, MAX_JSON_BYTES, FileTooLarge, parse_json, read_capped

PREFIX = "shards:"
INDEX_NAME = "index.json"
FORMAT = "visiontrain.shards"
VERSION = 1
IMAGE_EXTS = ("jpg", "png")  # what a shard member may be; anything else (.pth, .pyd pickles...) is refused
DEFAULT_BUFFER = 4096  # samples: the window the training order shuffles within
_OPEN_SHARDS = 32  # file descriptors kept open per process


def is_shards(name: str) -> bool:
    """Whether ``--data name`` means a packed folder: ``shards:PATH`` or a folder holding ``index.json``."""
    return name.startswith(PREFIX) or (user_path(name) / INDEX_NAME).is_file()


def shard_order(shard_of: np.ndarray, seed: int, epoch: int, buffer: int) -> torch.Tensor:
    """The sample order of an epoch: shards in a (seed, epoch) order, members in sequence, shuffled in a window.

    ``shard_of[i]`` is the shard of sample ``i`` (samples of a shard in member order). The window shuffle sorts
    by ``position + U(0, buffer)``: vectorised, and no sample moves a buffer's length or more, which bounds how
    far apart the reads of a batch are.

    >>> shard_order(np.array([0, 0, 0, 1, 1, 1]), seed=0, epoch=0, buffer=1).tolist()  # buffer 1: shard order only
    [3, 4, 5, 0, 1, 2]
    """
    n = len(shard_of)
    rng = np.random.default_rng([seed, epoch, 0x5A4D])
    shards = np.unique(shard_of)
    rank = np.zeros(int(shards.max()) + 1 if n else 1, dtype=np.int64)
    rank[shards[rng.permutation(len(shards))]] = np.arange(len(shards))
    sequence = np.argsort(rank[shard_of], kind="stable")  # by shard rank, then member order (a radix sort)
    keys = np.arange(n) + rng.random(n) * max(1, buffer)
    return torch.from_numpy(sequence[np.argsort(keys, kind="stable")].astype(np.int64))


@dataclass
class ShardSplit:
    """One split of a packed folder: where each sample's bytes lie (shard, offset, size) and its label."""

    folder: Path
    files: list[str]  # shard file names, indexed by ``shard``
    shard: np.ndarray  # int32 [N]
    offset: np.ndarray  # int64 [N]: the member's data in its shard
    size: np.ndarray  # int64 [N]
    member: np.ndarray  # int64 [N]: the sample's number in its split (its key)
    ext: np.ndarray  # uint8 [N]: index into IMAGE_EXTS
    labels: torch.Tensor
    split: str
    buffer: int = DEFAULT_BUFFER
    _fds: dict[int, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ShardSplit:
        i = index.numpy()
        return ShardSplit(self.folder, self.files, self.shard[i], self.offset[i], self.size[i], self.member[i],
                          self.ext[i], self.labels[index], self.split, self.buffer)

    def epoch_order(self, shuffle: bool, seed: int) -> Any:
        """``epoch → order`` for the loader: :func:`shard_order` when shuffling, else the packed order."""
        last: dict[int, torch.Tensor] = {}

        def order(epoch: int) -> torch.Tensor:
            if not shuffle:
                return torch.arange(len(self))
            if epoch not in last:  # asked for once per batch count and once per pass: computed once
                last.clear()
                last[epoch] = shard_order(self.shard, seed, epoch, self.buffer)
            return last[epoch]

        return order

    def name(self, i: int) -> str:
        """``OUT/train-000002.tar:train_00000017.jpg``: the shard and member, for messages."""
        return f"{self.folder / self.files[self.shard[i]]}:{member_key(self.split, int(self.member[i]))}." \
               f"{IMAGE_EXTS[self.ext[i]]}"

    @property
    def paths(self) -> list[Path]:
        """Names of the members, for ``bad_images.txt`` and messages (they are not files of their own)."""
        return [Path(self.name(i)) for i in range(len(self))]

    def read(self, i: int) -> bytes:
        """The bytes of sample ``i``: one positioned read, no tar walk (safe in any worker: no shared offset)."""
        shard = int(self.shard[i])
        fd = self._fds.get(shard)
        if fd is None:
            if len(self._fds) >= _OPEN_SHARDS:
                os.close(self._fds.pop(next(iter(self._fds))))
            try:
                fd = os.open(self.folder / self.files[shard], os.O_RDONLY)
            except OSError as exc:
                raise DataError(f"{self.folder / self.files[shard]}: cannot open the shard "
                                f"({exc.strerror or exc}); pack the data again") from None
            self._fds[shard] = fd
        data = os.pread(fd, int(self.size[i]), int(self.offset[i]))
        if len(data) != int(self.size[i]):
            raise DataError(f"{self.name(i)}: the shard is shorter than its index says; pack the data again")
        return data

    def open(self, i: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS,
             draft: int | None = None) -> Image.Image:
        """Sample ``i`` decoded by the guarded decoder; errors name the shard and member."""
        return open_image(self.read(i), channels, max_pixels=max_pixels, name=self.name(i), draft=draft)

    def __getstate__(self) -> dict[str, Any]:  # worker processes open their own files
        return {**self.__dict__, "_fds": {}}

    def __del__(self, _close: Any = os.close) -> None:  # bound now: at interpreter exit ``os`` may be gone
        for fd in self._fds.values():
            try:  # noqa: SIM105 (at interpreter exit contextlib may be gone too)
                _close(fd)
            except OSError:
                pass


def member_key(split: str, number: int) -> str:
    """The WebDataset key of sample ``number`` of ``split`` (no dots: WebDataset splits names at the first)."""
    return f"{split}_{number:08d}"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def folder_of(name: str) -> Path:
    return user_path(name.removeprefix(PREFIX) or ".")


def read_index(folder: Path) -> dict[str, Any]:
    """``index.json`` of a packed folder, through the bounded JSON reader; one clear line when it cannot be used."""
    path = folder / INDEX_NAME
    if not folder.is_dir():
        raise DataError(f"shards folder {folder} does not exist; make it with `visiontrain data pack SOURCE {folder}`")
    if not path.is_file():
        raise DataError(f"{folder} has no {INDEX_NAME}: not a packed folder, or a `visiontrain data pack` that did "
                        "not finish (the index is written last); run the pack again")
    try:
        index = parse_json(read_capped(path, MAX_JSON_BYTES, "a shards index"))
    except (OSError, ValueError, FileTooLarge) as exc:
        raise DataError(f"{path}: cannot be read as a shards index ({exc}); pack the data again") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path}: not a visiontrain shards index (format {FORMAT!r}); pack the data again")
    if not isinstance(index.get("version"), int) or index["version"] > VERSION:
        raise DataError(f"{path}: shards index version {index.get('version')!r} is newer than this visiontrain "
                        f"reads ({VERSION}); upgrade visiontrain")
    return index


def shards_source(cfg: DataConfig, seed: int) -> DataSource:
    """The :class:`DataSource` of a packed folder (``--data shards:OUT/``); ``--data-arg shuffle_buffer=N`` and
    ``verify=true`` (check every shard's SHA-256 first)."""
    folder = folder_of(cfg.name)
    unknown = set(cfg.args) - {"shuffle_buffer", "verify"}
    if unknown:
        raise DataError(f"data {cfg.name}: shards take the data args shuffle_buffer and verify, not "
                        f"{sorted(unknown)[0]!r}")
    buffer = _int_arg(cfg.args.get("shuffle_buffer", DEFAULT_BUFFER), "shuffle_buffer")
    verify = str(cfg.args.get("verify", "false")).lower() in ("true", "1", "yes")
    index = read_index(folder)
    where = folder / INDEX_NAME
    try:
        classes = [str(c) for c in index["classes"]]
        task = str(index.get("task", "classification"))
        splits = {name: _split(folder, name, entry, task, len(classes), buffer, verify)
                  for name, entry in index["splits"].items()}
        channels, size = int(index["channels"]), index.get("size")
        mean, std = index.get("mean"), index.get("std")
        bad = [(str(p), str(r)) for p, r in index.get("bad_images", [])]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DataError(f"{where}: a damaged shards index ({type(exc).__name__}: {exc}); pack the data again") \
            from None
    if "train" not in splits or len(classes) > MAX_CLASSES or channels not in (1, 3) \
            or task not in ("classification", "multilabel", "regression"):
        raise DataError(f"{where}: a damaged shards index (no train split, or bad classes, channels or task); "
                        "pack the data again")
    notes = [f"shards: {sum(len(s) for s in splits.values()):,} images in "
             f"{sum(len(e['shards']) for e in index['splits'].values())} shards from {folder}"]
    if bad:
        notes.append(f"{len(bad):,} bad image(s) were left out when packing (first: {bad[0][0]}: {bad[0][1]}); all "
                     "are listed in bad_images.txt")
    return DataSource(str(index.get("source") or folder.name), classes, channels,
                      int(size) if size is not None else None, splits,  # type: ignore[arg-type]
                      tuple(mean) if mean else None, tuple(std) if std else None, notes, task=task,
                      preset=str(index.get("preset", "photos")), root=folder, bad_images=bad)


def _int_arg(value: Any, key: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise DataError(f"data arg {key} must be a whole number of samples, at least 1, got {value!r}")
    return int(text)


def _split(folder: Path, name: str, entry: dict[str, Any], task: str, num_classes: int, buffer: int,
           verify: bool) -> ShardSplit:
    files: list[str] = []
    rows: list[list[Any]] = []
    for number, shard in enumerate(entry["shards"]):
        file = str(shard["file"])
        if Path(file).name != file or not file.endswith(".tar"):  # a name, never a path out of the folder
            raise DataError(f"{folder / INDEX_NAME}: shard {file!r} is not a .tar file name in the folder")
        _check_shard(folder / file, int(shard["bytes"]), str(shard["sha256"]) if verify else None)
        files.append(file)
        for member, ext, offset, size, label in shard["members"]:
            key = f"{member_key(name, int(member))}.{ext}"
            if ext not in IMAGE_EXTS:  # shards are data only: nothing but images is ever read from them
                raise DataError(f"{folder / file}: member {key} is refused: shards hold .jpg/.png images only "
                                "(never pickles such as .pth or .pyd); pack the data again")
            if offset < 0 or size < 1 or offset + size > int(shard["bytes"]):
                raise DataError(f"{folder / file}: member {key} lies outside the shard; pack the data again")
            rows.append([number, int(offset), int(size), int(member), IMAGE_EXTS.index(ext), label])
    labels = _labels([r[5] for r in rows], task, num_classes, folder / INDEX_NAME)
    table = np.array([r[:5] for r in rows], dtype=np.int64).reshape(-1, 5)
    return ShardSplit(folder, files, table[:, 0].astype(np.int32), table[:, 1], table[:, 2], table[:, 3],
                      table[:, 4].astype(np.uint8), labels, name, buffer)


def _labels(values: list[Any], task: str, num_classes: int, where: Path) -> torch.Tensor:
    if task == "classification":
        labels = torch.tensor(values, dtype=torch.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{where}: a label is outside the {num_classes} classes; pack the data again")
        return labels
    if task == "regression":
        return torch.tensor(values, dtype=torch.float32)
    return torch.tensor(values, dtype=torch.float32).reshape(len(values), num_classes)


def _check_shard(path: Path, size: int, sha256: str | None) -> None:
    try:
        actual = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: shard missing or unreadable ({exc.strerror or exc}); pack the data again") from None
    if actual != size:
        raise DataError(f"{path}: {actual:,} bytes, but the index says {size:,}; the shard was changed or cut short "
                        "- pack the data again")
    if sha256 is not None and file_sha256(path) != sha256:
        raise DataError(f"{path}: SHA-256 does not match the index; the shard was changed - pack the data again")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
