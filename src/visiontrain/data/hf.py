"""Hugging Face datasets: ``--data hf:NAME_OR_PATH[:config]`` through the ``datasets`` library (the ``hf`` extra).

``NAME_OR_PATH`` is a folder written by ``save_to_disk``, a ``.parquet``/``.arrow`` file, a folder of them (split
names in the file names, as on the Hub), or a Hub name found in the Hugging Face cache (offline with
``HF_HUB_OFFLINE=1`` or ``--no-download``) or downloaded. The image column (an ``Image`` feature) and the label
column (a ``ClassLabel`` feature; a list of them per image — ``Sequence(ClassLabel)`` — makes a multi-label set, a
float column a regression set) are found from the features, or named with ``--data-arg image=COLUMN
label=COLUMN``; class names come from the ``ClassLabel``. The dataset's own splits are
used: ``train``, ``validation``/``valid``/``val``/``dev`` and ``test``/``testing`` (any case), or named with
``--data-arg train=SPLIT val=SPLIT test=SPLIT``. ``--data-arg streaming=true`` reads them as streams (a seeded
shuffle buffer of ``--data-arg buffer=N`` images), never all at once.

Safety: the image column is read with ``decode=False`` — the stored bytes go through visiontrain's guarded decoder
(:func:`visiontrain.data.images.open_image`: allowed formats, pixel limit, bombs), never through ``datasets``' own
unbounded Pillow decode; ``trust_remote_code`` is never passed (``datasets`` 4+ runs no loading scripts at all), so
a run's files naming an ``hf:`` source name data, not code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from visiontrain.config import DataConfig
from visiontrain.data.images import ImageInfo, open_image, probe_image
from visiontrain.data.scan import SKIP_HINT, natural_shape, reason_of, skipped_note
from visiontrain.data.types import DataSource, FileSplit, ItemSplit, Split, StreamSplit
from visiontrain.errors import DataError, ImageError
from visiontrain.fileio import user_path
from visiontrain.limits import MAX_CLASSES
from visiontrain.optional import require

PREFIX = "hf:"
# A dataset's split names → visiontrain's splits, compared in lower case (the folder source's aliases, plus "dev").
SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
ARGS = ("image", "label", "train", "val", "test", "streaming", "buffer")
DEFAULT_BUFFER = 10_000  # images held by the streaming shuffle buffer (encoded: ~100 KB each for photos)
_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
_PROBE_ALL_UP_TO = 100_000  # images per split whose headers are all read up front (~20 µs each)
_PROBE_SAMPLE = 1000


def is_hf(name: object) -> bool:
    """Whether a data name is a Hugging Face dataset (``hf:...``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def hf_source(cfg: DataConfig, seed: int) -> DataSource:
    """A :class:`DataSource` of the Hugging Face dataset ``cfg.name`` (``hf:NAME_OR_PATH[:config]``)."""
    datasets = require("datasets", "hf")
    args = _check_args(cfg)
    where = f"data {cfg.name}"
    streaming = _flag(args.get("streaming", "false"), "streaming", where)
    with _offline(datasets, not cfg.download):
        raw, lengths = _open(datasets, cfg.name.removeprefix(PREFIX), where, streaming)
    names = _pick_splits(list(raw), args, where)
    features = raw[names["train"]].features
    if features is None:
        raise DataError(f"{where}: its features (column types) are unknown in streaming mode; save it with "
                        "save_to_disk or as parquet, or read it without streaming")
    image_col, label_col = _columns(datasets, features, args, where)
    notes = [f"{where}: splits {', '.join(f'{theirs} → {ours}' for ours, theirs in names.items())}; image column "
             f"{image_col!r}, label column {label_col!r}"]
    tables = {ours: raw[theirs].select_columns([image_col, label_col])
              .cast_column(image_col, datasets.Image(decode=False)) for ours, theirs in names.items()}
    if streaming:
        return _stream_source(cfg, args, datasets, tables, names, lengths, features[label_col], (image_col, label_col),
                              notes)
    task, classes, encode = _label_kind(datasets, features[label_col], tables["train"], label_col, where)
    bad: list[tuple[str, str]] = []
    splits: dict[str, Split] = {}
    infos: list[FileSplit] = []
    for ours, table in tables.items():
        label = f"{cfg.name}/{names[ours]}"
        labels = encode(_column(table, label_col))
        if ours != "train" and task == "classification" and len(labels) and bool((labels < 0).all()):
            notes.append(f"{where}: its {names[ours]} split has no labels (-1); left out")
            continue
        keep, seen = _probe(table, image_col, label, cfg, bad)
        if task == "classification" and bool((labels[keep] < 0).any()):
            raise DataError(f"{where}: {int((labels[keep] < 0).sum()):,} images of its {names[ours]} split have no "
                            "label (-1); drop them from the dataset first (dataset.filter)")
        images = HFImages(table, image_col, 3, cfg.max_pixels, label)
        splits[ours] = ItemSplit(images, keep, labels[keep], label)
        infos.append(FileSplit([], labels[:0], seen))
    channels, side = natural_shape(infos)
    for split in splits.values():
        split.dataset.channels = channels  # type: ignore[union-attr]
    if any(len(split.infos or []) < len(splits[name]) for name, split in zip(splits, infos, strict=True)):
        side = None  # a sample of the headers was read: the sizes of the rest are unknown
    preset = "photos" if side is None or side > 64 else "cifar"
    return DataSource(cfg.name, ["value"] if task == "regression" else classes, channels, side, splits, None,
                      None, notes + skipped_note(bad), task=task, preset=preset, bad_images=bad)


class HFImages:
    """The image column of one split, decoded by visiontrain's guarded decoder: ``[i]`` → a PIL image ('L' or 'RGB').

    The table is Arrow, memory-mapped from disk (or the HF cache): DataLoader workers share it, nothing is copied.
    """

    def __init__(self, table: Any, column: str, channels: int, max_pixels: int, name: str) -> None:
        self.table, self.column, self.channels, self.max_pixels, self.name = table, column, channels, max_pixels, name

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> Image.Image:
        return open_image(*_payload(self.table[i][self.column], f"{self.name}[{i}]"), self.channels,
                          max_pixels=self.max_pixels, name=f"{self.name}[{i}]")


def _payload(cell: Any, name: str) -> tuple[bytes | str]:
    """What ``open_image`` reads for one cell of an ``Image(decode=False)`` column: its bytes, else its file path."""
    if isinstance(cell, dict) and cell.get("bytes"):
        return (cell["bytes"],)
    if isinstance(cell, dict) and cell.get("path"):
        return (cell["path"],)
    raise ImageError(name, "the dataset holds no image here (neither bytes nor a path)", "fix or drop this row")


def _check_args(cfg: DataConfig) -> dict[str, str]:
    unknown = sorted(set(cfg.args) - set(ARGS))
    if unknown:
        raise DataError(f"data {cfg.name}: no argument {unknown[0]!r}; a Hugging Face dataset takes "
                        f"{', '.join(ARGS)} (--data-arg image=COLUMN label=COLUMN train=SPLIT ...)")
    return {k: str(v) for k, v in cfg.args.items()}


def split_spec(spec: str) -> tuple[str, str | None]:
    """``NAME_OR_PATH[:config]`` → (name or path, config or None); a path that exists keeps its colons.

    >>> split_spec("cifar10"), split_spec("ylecun/mnist:mnist"), split_spec("./data/my_set")
    (('cifar10', None), ('ylecun/mnist', 'mnist'), ('./data/my_set', None))
    """
    head, colon, tail = spec.rpartition(":")
    if not colon or not head or "/" in tail or "\\" in tail or user_path(spec).exists():
        return spec, None
    return head, tail


def _open(datasets: Any, spec: str, where: str, streaming: bool = False) -> tuple[dict[str, Any], dict[str, int]]:
    """(the dataset's splits by their own names — a ``Dataset`` each, an ``IterableDataset`` when ``streaming`` —,
    their lengths where known); refuses what cannot be read, in one line."""
    name, config = split_spec(spec)
    path = user_path(name)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            found = datasets.load_from_disk(str(path))  # memory-mapped: streaming only changes how it is read
            splits = {"train": found} if isinstance(found, datasets.Dataset) else dict(found)
            lengths = {k: len(v) for k, v in splits.items()}
            if streaming:
                splits = {k: v.to_iterable_dataset(num_shards=_shards(len(v))) for k, v in splits.items()}
            return splits, lengths
        if path.is_file():
            builder = _FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{where}: {path} is neither a .parquet nor an .arrow file; pass one of those, a "
                                "save_to_disk folder or a Hub dataset name")
            found = datasets.load_dataset(builder, data_files={"train": str(path)}, streaming=streaming)
        else:  # a folder of files, the HF cache or the Hub; never a loading script (datasets 4+ has none)
            found = datasets.load_dataset(name, config, streaming=streaming)
    except DataError:
        raise
    except Exception as exc:  # DatasetNotFoundError, FileNotFoundError, ConnectionError, ValueError: one line
        text = " ".join(str(exc).split())
        raise DataError(f"{where}: cannot load it: {type(exc).__name__}: {text[:300]}; pass a save_to_disk folder, "
                        "a .parquet/.arrow file, or a Hub name (offline: it must be in the HF cache)") from None
    splits = dict(found)
    if not streaming:
        return splits, {k: len(v) for k, v in splits.items()}
    known = next(iter(splits.values())).info.splits or {}
    return splits, {k: known[k].num_examples for k in splits if k in known and known[k].num_examples}


@contextlib.contextmanager
def _offline(datasets: Any, offline: bool) -> Iterator[None]:
    """``--no-download``: ``datasets`` reads the HF cache only, as with ``HF_HUB_OFFLINE=1`` (its flag is read when
    it is imported, so it is set on its config for the load, then put back)."""
    before = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = before


def _shards(n: int) -> int:
    """Shards of a saved dataset read as a stream: enough for several DataLoader workers, ~1000+ rows each."""
    return max(1, min(64, n // 1000))


def _flag(value: str, key: str, where: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "1", "yes", "false", "0", "no"):
        return text in ("true", "1", "yes")
    raise DataError(f"{where}: --data-arg {key} must be true or false, not {value!r}")


def _stream_source(cfg: DataConfig, args: dict[str, str], datasets: Any, tables: dict[str, Any],
                   names: dict[str, str], lengths: dict[str, int], feature: Any, columns: tuple[str, str],
                   notes: list[str]) -> DataSource:
    """The splits as :class:`StreamSplit`: read in order through a seeded shuffle buffer, never all at once."""
    where = f"data {cfg.name}"
    multilabel = _multilabel_names(datasets, feature)
    if isinstance(feature, datasets.ClassLabel):
        task, classes = "classification", list(feature.names)
    elif multilabel is not None:
        task, classes = "multilabel", multilabel
    elif isinstance(feature, datasets.Value) and getattr(feature, "dtype", "").startswith("float"):
        task, classes = "regression", ["value"]
    else:
        raise DataError(f"{where}: streaming needs a ClassLabel, a list of them (multi-label) or a float label "
                        f"column, and {columns[1]!r} holds {feature!r}; read it without streaming, or cast the column "
                        "to ClassLabel")
    if "val" not in names and cfg.val_split > 0 and not cfg.split_file:
        raise DataError(f"{where}: streaming reads no held-out split of train, and it has no validation split; pass "
                        "--val-split 0 (no validation), or read it without streaming")
    buffer = _whole(args.get("buffer", str(DEFAULT_BUFFER)), where)
    splits: dict[str, Split] = {}
    for ours, table in tables.items():
        if names[ours] not in lengths:
            raise DataError(f"{where}: the size of its {names[ours]} split is unknown in streaming mode (no "
                            "metadata); save it with save_to_disk or as parquet, or read it without streaming")
        reader = HFStream(table, columns, buffer, task, len(classes))
        first = next(iter(reader.items(0, 0, False, keep_unlabelled=True)), None)
        if ours != "train" and task == "classification" and first is not None and first[1] < 0:
            notes.append(f"{where}: its {names[ours]} split has no labels (-1); left out")
            continue
        splits[ours] = StreamSplit(reader, lengths[names[ours]], f"{cfg.name}/{names[ours]}")
    train = splits["train"]
    assert isinstance(train, StreamSplit)
    seen = [probe_image(payload, cfg.max_pixels, name=f"{train.name}[item {k}]")
            for k, (payload, _) in zip(range(32), train.reader.items(0, 0, False), strict=False)]
    channels, _ = natural_shape([FileSplit([], train.labels, seen)])
    notes.append(f"{where}: streamed (shuffle buffer {buffer:,} images); items with label -1 are skipped")
    return DataSource(cfg.name, classes, channels, None, splits, None, None, notes, task=task, preset="photos")


def _whole(value: str, where: str) -> int:
    if value.strip().isdigit() and int(value) >= 1:
        return int(value)
    raise DataError(f"{where}: --data-arg buffer must be a whole number of images (>= 1), not {value!r}")


class HFStream:
    """Reads one split of a Hugging Face ``IterableDataset``: ``(payload, label)`` in a seeded shuffle-buffer order
    (shards shuffled too; the epoch moves the seed); DataLoader workers each read their own shards."""

    def __init__(self, table: Any, columns: tuple[str, str], buffer: int, task: str, classes: int = 0) -> None:
        self.table, self.columns, self.buffer, self.task, self.classes = table, columns, buffer, task, classes

    @property
    def shards(self) -> int:
        """How many DataLoader workers can read it at once (one shard each at least)."""
        return int(self.table.num_shards)

    def items(self, seed: int, epoch: int, shuffle: bool, *, keep_unlabelled: bool = False) -> Any:
        table = self.table.shuffle(seed=seed, buffer_size=self.buffer) if shuffle else self.table
        table.set_epoch(epoch)
        image, label = self.columns
        for row in table:
            value = row[label]
            if self.task == "classification" and value < 0 and not keep_unlabelled:
                continue  # no label (the Hub's hidden test answers): nothing to learn or score
            cell = row[image]
            payload = (cell.get("bytes") or cell.get("path") or b"") if isinstance(cell, dict) else b""
            if self.task == "multilabel":
                yield payload, _multi_hot([value], self.classes, f"column {label!r}")[0]
            else:
                yield payload, torch.tensor(value, dtype=torch.int64 if self.task == "classification" else
                                            torch.float32)


def _pick_splits(available: list[str], args: dict[str, str], where: str) -> dict[str, str]:
    """visiontrain split → the dataset's split name, by ``--data-arg`` or by the common names."""
    out: dict[str, str] = {}
    for ours, aliases in SPLIT_NAMES.items():
        if ours in args:
            if args[ours] not in available:
                raise DataError(f"{where}: no split {args[ours]!r} (--data-arg {ours}=); it has "
                                f"{', '.join(available)}")
            out[ours] = args[ours]
            continue
        matches = [name for name in available if name.lower() in aliases]
        if len(matches) > 1:
            raise DataError(f"{where}: splits {' and '.join(matches)} both look like {ours}; pick one with "
                            f"--data-arg {ours}=SPLIT")
        if matches:
            out[ours] = matches[0]
    if "train" not in out:
        raise DataError(f"{where}: no train split (it has {', '.join(available)}); name it with "
                        "--data-arg train=SPLIT")
    return out


def _columns(datasets: Any, features: Any, args: dict[str, str], where: str) -> tuple[str, str]:
    """(image column, label column): named by ``--data-arg``, else the one ``Image`` / ``ClassLabel`` column."""
    columns = list(features)
    for key in ("image", "label"):
        if key in args and args[key] not in columns:
            raise DataError(f"{where}: no column {args[key]!r} (--data-arg {key}=); it has {', '.join(columns)}")
    image = args.get("image") or _only(columns, lambda c: isinstance(features[c], datasets.Image), "an Image", where,
                                       "image")
    label = args.get("label") or _only(columns, lambda c: isinstance(features[c], datasets.ClassLabel)
                                       or _multilabel_names(datasets, features[c]) is not None,
                                       "a ClassLabel (or a list of them)", where, "label",
                                       fallback=("label", "labels", "target"))
    if not isinstance(features[image], datasets.Image):
        raise DataError(f"{where}: column {image!r} holds {type(features[image]).__name__}, not images")
    return image, label


def _only(columns: list[str], test: Any, kind: str, where: str, key: str, fallback: tuple[str, ...] = ()) -> str:
    found = [c for c in columns if test(c)] or [c for c in columns if c.lower() in fallback]
    if len(found) == 1:
        return found[0]
    what = f"{len(found)} columns are {kind} ({', '.join(found)})" if found else f"no column is {kind}"
    raise DataError(f"{where}: {what}; name the {key} column with --data-arg {key}=COLUMN (columns: "
                    f"{', '.join(columns)})")


def _column(table: Any, column: str) -> np.ndarray:
    return np.asarray(table.with_format("numpy")[column][:])


def _label_kind(datasets: Any, feature: Any, train: Any, column: str, where: str) -> tuple[str, list[str], Any]:
    """(task, classes, values → label tensor) from the label column's feature."""
    if isinstance(feature, datasets.ClassLabel):
        return "classification", list(feature.names), lambda v: torch.as_tensor(v.astype(np.int64))
    names = _multilabel_names(datasets, feature)
    if names is not None:
        return "multilabel", names, lambda v: _multi_hot(list(v), len(names), f"{where}: column {column!r}")
    dtype = getattr(feature, "dtype", "")
    if isinstance(feature, datasets.Value) and dtype.startswith("float"):
        return "regression", [], lambda v: torch.as_tensor(v.astype(np.float32))
    if isinstance(feature, datasets.Value) and (dtype.startswith("int") or dtype in ("string", "large_string")):
        values = _column(train, column)
        numeric = dtype.startswith("int")  # 2 before 10
        classes = sorted({str(v) for v in values.tolist()}, key=lambda s: (int(s), s) if numeric else (0, s))
        if len(classes) > MAX_CLASSES:
            raise DataError(f"{where}: column {column!r} has {len(classes):,} distinct values; more than "
                            f"{MAX_CLASSES:,} classes — is it the label? Name it with --data-arg label=COLUMN")
        index = {name: i for i, name in enumerate(classes)}

        def encode(v: np.ndarray) -> torch.Tensor:
            try:
                return torch.tensor([index[str(x)] for x in v.tolist()], dtype=torch.int64)
            except KeyError as exc:
                raise DataError(f"{where}: label {exc.args[0]!r} is not among the training labels") from None

        return "classification", classes, encode
    raise DataError(f"{where}: the label column {column!r} holds {feature!r}; a label is a ClassLabel, a list of "
                    "ClassLabel values (multi-label), an integer, a string or a float (regression)")


def _multilabel_names(datasets: Any, feature: Any) -> list[str] | None:
    """The class names of a multi-label column — a list of ``ClassLabel`` values per image (``Sequence(ClassLabel)``,
    ``List(ClassLabel)``) — else None."""
    inner = getattr(feature, "feature", None)
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def _multi_hot(rows: list[Any], classes: int, where: str) -> torch.Tensor:
    """Rows of class indices → float32 multi-hot ``[len(rows), classes]`` (an empty row: no class present)."""
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    flat = np.concatenate([np.asarray(row, dtype=np.int64).ravel() for row in rows]) if lengths.sum() else \
        np.zeros(0, dtype=np.int64)
    row_of = np.repeat(np.arange(len(rows)), lengths)  # the row each index of ``flat`` belongs to
    if flat.size and (flat.min() < 0 or flat.max() >= classes):
        row = int(row_of[(flat < 0) | (flat >= classes)][0])
        raise DataError(f"{where}: row {row} holds label {list(rows[row])}, outside its {classes} classes (0 to "
                        f"{classes - 1}); fix the column or drop the row (dataset.filter)")
    out = torch.zeros(len(rows), classes, dtype=torch.float32)
    out[torch.from_numpy(row_of), torch.from_numpy(flat)] = 1.0
    return out


def _probe(table: Any, column: str, label: str, cfg: DataConfig,
           bad: list[tuple[str, str]]) -> tuple[torch.Tensor, list[ImageInfo]]:
    """(rows kept, headers seen): every image's header up to :data:`_PROBE_ALL_UP_TO`, else a sample; a bad one
    follows ``bad_images`` (error: one line naming the row; skip: dropped and listed)."""
    n = len(table)
    rows = range(n) if n <= _PROBE_ALL_UP_TO else range(0, n, n // _PROBE_SAMPLE)
    part = table.select_columns([column]) if n <= _PROBE_ALL_UP_TO else table.select(rows).select_columns([column])
    # In chunks: the whole column of encoded images at once could be gigabytes.
    cells = (cell for chunk in part.iter(batch_size=1024) for cell in chunk[column])
    infos: list[ImageInfo] = []
    dropped: list[int] = []
    for i, cell in zip(rows, cells, strict=True):
        name = f"{label}[{i}]"
        try:
            infos.append(probe_image(*_payload(cell, name), cfg.max_pixels, name=name))
        except ImageError as exc:
            if cfg.bad_images == "error":
                raise DataError(f"{name}: {reason_of(exc, name)}; {SKIP_HINT}") from None
            bad.append((name, reason_of(exc, name)))
            dropped.append(i)
    keep = torch.ones(n, dtype=torch.bool)
    keep[dropped] = False
    return keep.nonzero().flatten(), infos
