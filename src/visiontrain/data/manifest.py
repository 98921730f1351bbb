"""Manifests: a CSV (``path,label``) or JSON-lines (``{"path": …, "label": …}``) list of images.

``label`` (or ``class``) makes a classification set: class names, or indices 0..K-1. ``value`` makes a
**regression** set of float targets. ``labels`` makes a **multi-label** set: several names per image, separated
by ``|`` or ``;`` in a CSV cell (``cat|dog``), a list in JSON (``["cat", "dog"]``); so does a CSV whose columns
after ``path`` (and ``split``) are all 0/1, one column per label. An image with no label is a negative for
every label (data arg ``empty=error`` refuses it). An optional ``split`` column (train / val / test) assigns rows to
splits. Paths are relative to the manifest's folder (or ``--data-arg root=DIR``). A two-column CSV without
a header row is read as ``path,label``. A manifest names its files, so an absolute path is used as written;
but with a ``root`` given, a relative path must stay inside it (``../x.jpg`` that leaves it is an error).

```
path,label              path,value,split
ants/1.jpg,ants         faces/001.png,23.5,train
bees/7.jpg,bees         faces/002.png,41.0,val
                                                            path,cat,dog
path,labels             {"path": "a.jpg", "labels": ["cat", "dog"]}    a.jpg,1,1
a.jpg,cat|dog           {"path": "b.jpg", "labels": []}               b.jpg,0,0
```
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from visiontrain.config import DataConfig
from visiontrain.data.scan import natural_shape, scan_files, skipped_note
from visiontrain.data.types import DataSource, FileSplit, Split
from visiontrain.errors import DataError
from visiontrain.fileio import user_path
from visiontrain.limits import MAX_CLASSES, MAX_MANIFEST_BYTES, parse_json, read_capped

_LABEL_KEYS = {"label": "classification", "class": "classification", "value": "regression",
               "labels": "multilabel"}
_COLUMNS = "\x00columns"  # the target "column" of a CSV with one 0/1 column per label (rows carry name lists)
_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_ARGS = {"root", "classes", "empty"}
_SEPARATORS = re.compile(r"[|;]")  # between the labels of one CSV cell: cat|dog or cat;dog

Row = tuple[int, str, Any, str]  # (line number, path, label or value, split)


def manifest_source(path: Path, cfg: DataConfig, seed: int) -> DataSource:
    """A :class:`DataSource` from a manifest file (see the module doc for the format)."""
    unknown = set(cfg.args) - _ARGS
    if unknown:
        raise DataError(f"a manifest takes the data args {', '.join(sorted(_ARGS))}; got {sorted(unknown)[0]!r}")
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist; pass a .csv or .jsonl file of path,label rows")
    rows, task = _read_rows(path)
    if not rows:
        raise DataError(f"manifest {path} has no rows; add lines of path,label (or path,value)")
    root = user_path(cfg.args.get("root", path.parent))
    if task == "regression":
        classes, targets = _regression(rows, path)
    elif task == "multilabel":
        classes, targets = _multilabel(rows, path, cfg.args.get("classes"), cfg.args.get("empty", "allow"))
    else:
        classes, targets = _classification(rows, path, cfg.args.get("classes"))
    bad: list[tuple[str, str]] = []
    splits: dict[str, Split] = {}
    for name in ("train", "val", "test"):
        index = [i for i, row in enumerate(rows) if row[3] == name]
        if index:
            paths = [_resolve(root, rows[i], path if "root" in cfg.args else None) for i in index]
            splits[name] = scan_files(paths, targets[index], cfg.bad_images, cfg.max_pixels, bad)
    if "train" not in splits or len(splits["train"]) == 0:
        raise DataError(f"manifest {path} has no readable training rows (rows with no split, or split train)")
    channels, side = natural_shape([s for s in splits.values() if isinstance(s, FileSplit)])
    preset = "photos" if side is None or side > 64 else "cifar"
    return DataSource(path.stem, classes, channels, side, splits, None, None, skipped_note(bad), task=task,
                      preset=preset, root=root, bad_images=bad)


def _resolve(root: Path, row: Row, bounded_by: Path | None) -> Path:
    """The row's file; ``bounded_by`` (the manifest, when it was given a root): the path must stay in the root."""
    p = user_path(row[1])
    if p.is_absolute():
        return p
    if bounded_by is not None and not _inside(os.path.abspath(root / p), os.path.abspath(root)):
        raise DataError(f"manifest {bounded_by}, line {row[0]}: path {row[1]!r} leads outside the data root {root}; "
                        "give it as an absolute path, or a root that holds it")
    return root / p


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _read_rows(path: Path) -> tuple[list[Row], str]:
    try:
        text = read_capped(path, MAX_MANIFEST_BYTES, "a manifest").decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"manifest {path} cannot be read as UTF-8 text: {exc}") from None
    reader = _json_rows if path.suffix.lower() in (".jsonl", ".json") else _csv_rows
    return reader(path, text)


def _csv_rows(path: Path, text: str) -> tuple[list[Row], str]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    lines = [(n, r) for n, r in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), 1) if any(r)]
    if not lines:
        return [], "classification"
    header = [h.strip().lower() for h in lines[0][1]]
    if "path" not in header:
        if len(header) != 2:
            raise DataError(f"manifest {path}: line 1 needs a header with a 'path' column and 'label' or 'value' "
                            f"(e.g. path,label), got {lines[0][1]}")
        header, body = ["path", "label"], lines  # headerless path,label
    else:
        body = lines[1:]
    task, target = _target_column(path, header, [h.strip() for h in lines[0][1]])
    col = {name: i for i, name in enumerate(header)}
    rows = []
    for n, fields in body:
        if len(fields) < len(header):
            raise DataError(f"manifest {path}, line {n}: expected {len(header)} fields ({','.join(header)}), "
                            f"got {len(fields)}")
        split = fields[col["split"]].strip() if "split" in col else "train"
        value: Any = (_flags(path, n, lines[0][1], fields, col) if target == _COLUMNS
                      else fields[col[target]].strip())
        rows.append((n, fields[col["path"]].strip(), value, _split_name(path, n, split)))
    return rows, task


def _flags(path: Path, line: int, names: list[str], fields: list[str], col: dict[str, int]) -> list[str]:
    """The labels of a row of 0/1 columns: the names of the columns that hold 1."""
    out = []
    for i, name in enumerate(names):
        if i in (col["path"], col.get("split")):
            continue
        cell = fields[i].strip()
        if cell not in ("0", "1"):
            raise DataError(f"manifest {path}, line {line}: column {name.strip()!r} holds {cell!r}; one column per "
                            "label takes 0 or 1")
        if cell == "1":
            out.append(name.strip())
    return out


def _json_rows(path: Path, text: str) -> tuple[list[Row], str]:
    try:
        if path.suffix.lower() == ".json":
            records = list(enumerate(parse_json(text), 1))
        else:
            records = [(n, parse_json(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    except (ValueError, TypeError) as exc:
        raise DataError(f"manifest {path}: not valid JSON{'' if path.suffix == '.json' else ' lines'}: {exc}") from None
    if not records:
        return [], "classification"
    if not all(isinstance(r, dict) for _, r in records):
        raise DataError(f"manifest {path}: every record must be an object like {{\"path\": ..., \"label\": ...}}")
    task, target = _target_column(path, list(records[0][1]))
    rows = []
    for n, record in records:
        if "path" not in record or target not in record:
            raise DataError(f"manifest {path}, record {n}: needs 'path' and {target!r}, has {sorted(record)}")
        split = str(record.get("split", "train"))
        rows.append((n, str(record["path"]), record[target], _split_name(path, n, split)))
    return rows, task


def _target_column(path: Path, names: list[str], raw: list[str] | None = None) -> tuple[str, str]:
    found = [name for name in names if name in _LABEL_KEYS]
    others = [name for name in names if name not in ("path", "split")]
    if not found and raw is not None and len(others) >= 2:  # a CSV of path + one 0/1 column per label
        return "multilabel", _COLUMNS
    if len(found) != 1:
        raise DataError(f"manifest {path}: needs exactly one of the columns label, class (classification), labels "
                        f"(multi-label) or value (regression), or one 0/1 column per label; found {names}")
    return _LABEL_KEYS[found[0]], found[0]


def _split_name(path: Path, line: int, text: str) -> str:
    name = _SPLITS.get(text.strip().lower() or "train")
    if name is None:
        raise DataError(f"manifest {path}, line {line}: split {text!r} is not train, val or test")
    return name


def _classification(rows: list[Row], path: Path, names: Any) -> tuple[list[str], torch.Tensor]:
    """Labels as indices: class names sorted, or integer labels 0..K-1 (named by ``classes`` if given)."""
    raw = [row[2] for row in rows]
    if all(_is_index(v) for v in raw):
        labels = [int(v) for v in raw]
        count = max(labels) + 1
        if count > MAX_CLASSES:
            raise DataError(f"manifest {path}: label {max(labels)} is over the limit of {MAX_CLASSES:,} classes; "
                            "integer labels are class indices 0..K-1")
        if names is not None:
            if not isinstance(names, list) or len(names) < count:
                raise DataError(f"manifest {path}: data arg classes must list at least {count} names")
            return [str(n) for n in names], torch.tensor(labels, dtype=torch.int64)
        return [str(i) for i in range(count)], torch.tensor(labels, dtype=torch.int64)
    classes = sorted({str(v) for v in raw})
    if names is not None:
        missing = [c for c in classes if c not in [str(n) for n in names]]
        if missing:
            raise DataError(f"manifest {path}: label {missing[0]!r} is not in the data arg classes")
        classes = [str(n) for n in names]
    index = {c: i for i, c in enumerate(classes)}
    return classes, torch.tensor([index[str(v)] for v in raw], dtype=torch.int64)


def _is_index(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    # ASCII digits only: '²' and '٣' are digits to str.isdigit, and int('²') fails
    return isinstance(value, str) and value.isascii() and value.isdigit()


def _regression(rows: list[Row], path: Path) -> tuple[list[str], torch.Tensor]:
    values = []
    for n, _p, value, _s in rows:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataError(f"manifest {path}, line {n}: value {value!r} is not a number") from None
        if not math.isfinite(number):
            raise DataError(f"manifest {path}, line {n}: value {value!r} is not finite")
        values.append(number)
    return ["value"], torch.tensor(values, dtype=torch.float32)


def _multilabel(rows: list[Row], path: Path, names: Any, empty: Any) -> tuple[list[str], torch.Tensor]:
    """Multi-hot float32 targets [N, K]; the classes are sorted names, or the data arg ``classes`` in its order."""
    if empty not in ("allow", "error"):
        raise DataError(f"manifest {path}: data arg empty must be allow or error, not {empty!r}")
    per_row = [_label_list(path, n, value) for n, _p, value, _s in rows]
    if empty == "error":
        bare = next((rows[i][0] for i, labels in enumerate(per_row) if not labels), None)
        if bare is not None:
            raise DataError(f"manifest {path}, line {bare}: the image has no labels and data arg empty=error "
                            "forbids that; label it, or drop empty=error (it is then a negative for every label)")
    if names is not None:
        if not isinstance(names, list) or not names:
            raise DataError(f"manifest {path}: data arg classes must be a list of label names")
        classes = [str(c) for c in names]
        known = set(classes)
        for i, labels in enumerate(per_row):
            unknown = next((label for label in labels if label not in known), None)
            if unknown is not None:
                raise DataError(f"manifest {path}, line {rows[i][0]}: label {unknown!r} is not in the data arg "
                                f"classes ({', '.join(classes[:10])}); add it there or fix the row")
    else:
        classes = sorted({label for labels in per_row for label in labels})
    if not classes:
        raise DataError(f"manifest {path}: no image has a label; a multi-label set needs at least one")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"manifest {path}: {len(classes):,} labels is over the limit of {MAX_CLASSES:,}")
    index = {c: i for i, c in enumerate(classes)}
    targets = torch.zeros(len(rows), len(classes), dtype=torch.float32)
    for i, labels in enumerate(per_row):
        targets[i, [index[label] for label in labels]] = 1.0
    return classes, targets


def _label_list(path: Path, line: int, value: Any) -> list[str]:
    """One row's labels: a JSON list, or a text cell split on ``|`` or ``;``; blanks dropped, repeats once."""
    if isinstance(value, str):
        items: list[Any] = _SEPARATORS.split(value)
    elif isinstance(value, list):
        items = value
    else:
        raise DataError(f"manifest {path}, line {line}: labels must be a list of names or a text like cat|dog, "
                        f"got {value!r}")
    if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in items):
        raise DataError(f"manifest {path}, line {line}: every label must be a name, got {value!r}")
    return list(dict.fromkeys(s for s in (str(v).strip() for v in items) if s))
