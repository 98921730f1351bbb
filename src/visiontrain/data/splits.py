"""Held-out validation splits: stratified and seeded, saved as ``split.json`` and reusable from it.

A source without its own val split gets ``val_split`` of every class held out of train, the same images
for the same seed, and at least one image of every class that has two or more (so that 4 images per class and
``val_split`` 0.1 still validate on every class). Regression targets are stratified by quantile bins of their
values; multi-label rows by iterative stratification (:func:`iterative_split`). The split is
written to the run folder (``split.json``) so a later run can reuse exactly it with ``data.split_file``.

>>> keep, held = stratified_split(torch.tensor([0, 0, 0, 1, 1, 1]), 1 / 3, seed=0)
>>> len(keep), len(held)
(4, 2)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from visiontrain.errors import DataError
from visiontrain.limits import MAX_JSON_BYTES, parse_json, read_capped

SPLIT_FORMAT = "visiontrain-split/1"


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out) with ``fraction`` of every class held out, the same for the same seed.

    A class of two or more images gives at least one and keeps at least one (``fraction`` > 0); a class of
    one image stays in train. Float labels (regression targets) are grouped into up to 10 quantile bins first.

    >>> keep, held = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1]), 0.1, seed=0)
    >>> len(keep), len(held)  # 0.1 of 4 rounds to 0: one of each class is held out all the same
    (4, 2)
    """
    if labels.dim() == 2:
        return iterative_split(labels, fraction, seed)
    if labels.is_floating_point():
        labels = _quantile_bins(labels)
    gen = torch.Generator().manual_seed(seed)
    keep, held = [torch.empty(0, dtype=torch.int64)], [torch.empty(0, dtype=torch.int64)]
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        wanted = math.floor(len(idx) * fraction + 0.5)
        n_held = min(len(idx) - 1, max(wanted, 1 if fraction > 0 else 0)) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


def iterative_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out) of multi-hot rows [N, K] by iterative stratification (Sechidis et al., 2011):
    the rarest label still to place is dealt first, each of its images to the side that most lacks that label,
    so a rare label lands in val too. Images without labels are split by ``fraction`` at the end.

    Written here rather than taken from ``iterative-stratification``: that package needs scikit-learn (not a
    dependency) and draws from numpy's global random state; this is 30 lines, seeded by a torch generator.

    >>> y = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 1], [1, 0], [0, 1], [0, 0], [1, 0], [0, 1], [1, 1]])
    >>> keep, held = iterative_split(y.float(), 0.2, seed=0)
    >>> len(held), bool(y[held].sum(0).min() > 0)  # both labels are in the held-out part
    (2, True)
    """
    gen = torch.Generator().manual_seed(seed)
    y = labels.bool()
    n = len(y)
    order = torch.randperm(n, generator=gen)  # ties between sides and images break the same way for a seed
    want_rows = [n * (1 - fraction), n * fraction]  # rows each side still wants: [keep, held]
    want_label = torch.stack([y.sum(0) * (1 - fraction), y.sum(0) * fraction]).double()  # [2, K]
    side = torch.full((n,), -1, dtype=torch.int64)
    pending = y.clone()
    while pending.any():
        counts = pending.sum(0)
        label = int(torch.where(counts > 0, counts, n + 1).argmin())  # the rarest label with images to deal
        for i in order[pending[order, label]].tolist():
            need = want_label[:, label]
            pick = 0 if need[0] > need[1] else 1 if need[1] > need[0] else int(want_rows[1] > want_rows[0])
            side[i] = pick
            want_label[pick] -= y[i].double()
            want_rows[pick] -= 1
            pending[i] = False
    for i in order[side[order] < 0].tolist():  # images with no label at all
        pick = int(want_rows[1] > want_rows[0])
        side[i], want_rows[pick] = pick, want_rows[pick] - 1
    if fraction > 0 and n > 1 and not (side == 1).any():  # tiny data: still hold one out
        side[order[0]] = 1
    return torch.nonzero(side == 0).flatten(), torch.nonzero(side == 1).flatten()


def _quantile_bins(values: torch.Tensor) -> torch.Tensor:
    bins = max(1, min(10, len(values) // 5))  # at least ~5 values per bin, so each bin can give one away
    edges = torch.quantile(values.double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
    return torch.bucketize(values.double(), edges)


def split_record(source_name: str, seed: int, fraction: float, total: int, held: torch.Tensor,
                 paths: list[Path] | None, root: Path | None) -> dict[str, Any]:
    """What ``split.json`` holds: the held-out positions in the original train list and, for files, paths."""
    record: dict[str, Any] = {"format": SPLIT_FORMAT, "source": source_name, "seed": seed, "val_split": fraction,
                              "train_count": total, "val_indices": held.tolist()}
    if paths is not None:
        record["val_paths"] = [_relative(paths[i], root) for i in held.tolist()]
    return record


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def read_split_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        record = parse_json(read_capped(p, MAX_JSON_BYTES, "a split file"))
    except FileNotFoundError:
        raise DataError(f"split file {p} does not exist; pass the split.json of an earlier run") from None
    except (OSError, ValueError) as exc:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise DataError(f"split file {p} cannot be read as JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != SPLIT_FORMAT:
        raise DataError(f"split file {p} is not a visiontrain split.json (format {SPLIT_FORMAT})")
    return record


def held_from_record(record: dict[str, Any], total: int, paths: list[Path] | None, root: Path | None,
                     where: str) -> torch.Tensor:
    """The held-out positions a ``split.json`` names in this train list: by path for files, else by index."""
    if paths is not None and "val_paths" in record:
        position = {_relative(p, root): i for i, p in enumerate(paths)}
        missing = [p for p in record["val_paths"] if p not in position]
        if missing:
            raise DataError(f"{where}: {len(missing)} validation images it lists are not in the data "
                            f"(first: {missing[0]}); use the data it was made for, or drop data.split_file")
        return torch.tensor(sorted(position[p] for p in record["val_paths"]), dtype=torch.int64)
    if record.get("train_count") != total:
        raise DataError(f"{where}: made for {record.get('train_count')} training images, the data has {total}; "
                        "use the data it was made for, or drop data.split_file")
    held = torch.tensor(record.get("val_indices", []), dtype=torch.int64)
    if len(held) and (int(held.min()) < 0 or int(held.max()) >= total):
        raise DataError(f"{where}: validation indices outside 0..{total - 1}")
    return torch.unique(held)


def complement(total: int, held: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(total, dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten()


def split_json(record: dict[str, Any]) -> str:
    # ASCII escapes keep odd file names (undecodable bytes) intact through a UTF-8 file.
    return json.dumps(record, indent=1) + "\n"
