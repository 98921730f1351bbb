"""``visiontrain data info`` and ``data stats``: what a dataset holds, and what is wrong with it.

Counts per class and split, image sizes/modes seen, an imbalance warning, and exact duplicates by content
hash — inside a split and across train/val/test (leakage: the same image graded that it was trained on).

>>> from visiontrain.config import DataConfig
>>> from visiontrain.data.sources import load_source
>>> report = describe(load_source(DataConfig(name="synthetic", args={"train": 40, "val": 8, "test": 8}), 0))
>>> report["splits"]["train"]["count"], report["duplicates"]["across_splits"]
(40, [])
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch

from visiontrain.data.loaders import FileDataset
from visiontrain.data.types import DataSource, FileSplit, Split, StreamSplit, TensorSplit
from visiontrain.text import printable, utf8_safe

IMBALANCE_RATIO = 3.0  # warn when the largest class has this many times the images of the smallest
_SHOW = 10  # duplicate groups shown in the text report (all of them are in --json)
RUN_CHECK_BYTES = 512 * 2**20  # file bytes `train` reads at start-up for its duplicate and leakage warning


def describe(source: DataSource) -> dict[str, Any]:
    """The ``data info`` report of a loaded source, as plain data (JSON-able)."""
    report: dict[str, Any] = {
        "name": source.name, "task": source.task, "classes": source.classes, "channels": source.channels,
        "size": source.size, "splits": {name: _split_counts(split, source) for name, split in source.splits.items()},
        "images": _image_kinds(source), "bad_images": [{"path": utf8_safe(p), "reason": utf8_safe(r)}
                                                       for p, r in source.bad_images],
        "notes": list(source.notes),
        "skipped_links": [{"link": utf8_safe(link), "target": utf8_safe(target), "reason": reason}
                          for link, target, reason in source.skipped_links],
    }
    report["warnings"] = _imbalance(report["splits"].get("train", {}), source)
    report["duplicates"] = duplicates(source)
    if report["duplicates"]["across_splits"]:
        report["warnings"].append(f"{len(report['duplicates']['across_splits'])} image(s) appear in more than "
                                  "one split (leakage): validation/test scores overstate accuracy")
    return report


def label_text(label: torch.Tensor, task: str, classes: list[str]) -> str:
    """One image's label as a caption: a class name, a value, or a multi-label set joined by ``+``."""
    if task == "regression":
        return f"{float(label):.3g}"
    if task == "multilabel":
        return "+".join(classes[j] for j in label.nonzero().flatten().tolist()) or "(none)"
    return classes[int(label)]


def _split_counts(split: Split, source: DataSource) -> dict[str, Any]:
    out: dict[str, Any] = {"count": len(split)}
    if isinstance(split, StreamSplit):  # labels are known only as the stream is read
        return {**out, "streamed": True}
    if source.task == "multilabel":  # per label: images that have it; which labels come together; the unlabelled
        y = split.labels.double()
        out["per_class"] = dict(zip(source.classes, [int(v) for v in y.sum(dim=0)], strict=True))
        out["cooccurrence"] = (y.T @ y).long().tolist()
        out["without_labels"] = int((y.sum(dim=1) == 0).sum())
        out["labels_per_image"] = round(float(y.sum()) / max(len(y), 1), 3)
        return out
    if source.task == "regression":
        v = split.labels.double()
        out["values"] = {"min": float(v.min()), "mean": float(v.mean()), "max": float(v.max())} if len(v) else {}
        return out
    counts = torch.bincount(split.labels, minlength=len(source.classes)).tolist()
    out["per_class"] = dict(zip(source.classes, counts, strict=True))
    return out


def _image_kinds(source: DataSource) -> dict[str, Any]:
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    for split in source.splits.values():
        if isinstance(split, TensorSplit):
            sizes[f"{split.images.shape[-1]}x{split.images.shape[-2]}"] += len(split)
            modes["L" if split.images.shape[1] == 1 else "RGB"] += len(split)
            formats["tensor"] += len(split)
        elif isinstance(split, FileSplit) and split.infos is not None:
            for info in split.infos:
                sizes[f"{info.width}x{info.height}"] += 1
                modes[info.mode] += 1
                formats[info.format] += 1
    return {"sizes": dict(sizes.most_common(10)), "distinct_sizes": len(sizes), "modes": dict(modes),
            "formats": dict(formats)}


def _imbalance(train: dict[str, Any], source: DataSource) -> list[str]:
    counts = train.get("per_class", {})
    present = {c: n for c, n in counts.items() if n > 0}
    warnings = [f"class {c!r} has no training images" for c, n in counts.items() if n == 0]
    if len(present) >= 2:
        big = max(present, key=present.__getitem__)
        small = min(present, key=present.__getitem__)
        ratio = present[big] / present[small]
        if ratio >= IMBALANCE_RATIO:
            warnings.append(f"imbalanced: class {big!r} has {present[big]:,} training images, {ratio:.1f}x the "
                            f"{present[small]:,} of {small!r}; consider --class-weights auto or more data")
    return warnings


def duplicates(source: DataSource) -> dict[str, list[list[str]]]:
    """Groups of byte-identical images (file bytes, or pixels for in-memory data), within and across splits."""
    return _groups(_digests(source, items=True, max_bytes=None)[0])


def start_lines(source: DataSource, data: str, max_bytes: int = RUN_CHECK_BYTES) -> list[str]:
    """What ``train`` says at start-up about duplicates and train/val/test leakage in ``data`` (its ``--data``):
    the check ``data info`` makes, bounded: files are hashed up to ``max_bytes`` read (only files with a
    same-size twin can be duplicates, and those shared across splits go first); a user Dataset's items are
    not decoded for it."""
    entries, (hashed, candidates) = _digests(source, items=False, max_bytes=max_bytes)
    found = _groups(entries)
    across, within = len(found["across_splits"]), len(found["within_split"])
    partial = (f"hashed {hashed:,} of the {candidates:,} files with a same-size twin, {max_bytes / 2**20:,.0f} MiB; "
               f"`visiontrain data info {data}` checks them all") if hashed < candidates else ""
    if not across and not within:
        return [f"note: duplicate and leakage check at start-up found none ({partial})"] if partial else []
    parts = ([f"{across:,} image(s) appear in more than one split (leakage: validation/test scores overstate "
              "accuracy)"] if across else []) + ([f"{within:,} group(s) of identical images within a split"]
                                                 if within else [])
    return [f"warning: {' and '.join(parts)}; "
            + (partial or f"`visiontrain data info {data}` lists them")]


def _groups(entries: list[tuple[str, str, str]]) -> dict[str, list[list[str]]]:
    """(split, label, digest) entries → groups of two or more with one digest, within or across splits."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, label, digest in entries:
        groups[digest].append((name, label))
    within, across = [], []
    for members in groups.values():
        if len(members) < 2:
            continue
        entry = [f"{split}: {utf8_safe(label)}" for split, label in members]
        (across if len({split for split, _ in members}) > 1 else within).append(entry)
    return {"within_split": within, "across_splits": across}


def _digests(source: DataSource, items: bool, max_bytes: int | None) -> tuple[list[tuple[str, str, str]],
                                                                               tuple[int, int]]:
    """(split, label, digest) of every image (of a user Dataset's only with ``items``), and (files hashed, files
    that needed hashing)."""
    entries: list[tuple[str, str, str]] = []
    files: list[tuple[str, Path]] = []
    for name, split in source.splits.items():
        if isinstance(split, FileSplit):
            files += [(name, path) for path in split.paths]
        elif isinstance(split, StreamSplit):
            continue  # a stream is not read whole for a report
        elif isinstance(split, TensorSplit) or items:
            entries += [(name, label, digest) for label, digest in _memory_digests(split, name)]
    found, counts = _file_digests(files, max_bytes)
    return entries + found, counts


def _memory_digests(split: Split, name: str) -> list[tuple[str, str]]:
    if isinstance(split, TensorSplit):
        images = split.images.contiguous()
        return [(f"{name}[{i}]", hashlib.blake2b(images[i].numpy().tobytes(), digest_size=16).hexdigest())
                for i in range(len(split))]
    dataset = FileDataset(split, 3, None)
    out = []
    for i in range(len(split)):
        image, _label, _index, error = dataset[i]
        if not error:
            out.append((dataset.name(i), hashlib.blake2b(image.numpy().tobytes(), digest_size=16).hexdigest()))
    return out


def _file_digests(files: list[tuple[str, Path]], max_bytes: int | None) -> tuple[list[tuple[str, str, str]],
                                                                                 tuple[int, int]]:
    """Content hashes of the files that have a same-size twin (no other can be a duplicate), those with a twin in
    another split first, smaller first, until ``max_bytes`` are read; in the files' order."""
    sizes = [_size(path) for _, path in files]
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, size in enumerate(sizes):
        if size >= 0:
            by_size[size].append(i)
    twins = sorted((g for g in by_size.values() if len(g) > 1),
                   key=lambda g: (len({files[i][0] for i in g}) == 1, sizes[g[0]]))
    order = [i for group in twins for i in group]
    digests: dict[int, str] = {}
    read = done = 0
    for i in order:
        if max_bytes is not None and read + sizes[i] > max_bytes:
            break
        read, done = read + sizes[i], done + 1
        digest = _hash_file(files[i][1])
        if digest is not None:
            digests[i] = digest
    return [(files[i][0], str(files[i][1]), digests[i]) for i in sorted(digests)], (done, len(order))


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1  # unreadable now: the scan or the loader reports it


def _hash_file(path: Path) -> str | None:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def format_report(report: dict[str, Any]) -> str:
    """The text ``data info`` prints."""
    lines = [f"{report['name']}: {report['task']}, {report['channels']} channel(s), "
             f"{'size ' + str(report['size']) if report['size'] else 'mixed sizes'}"]
    if report["task"] in ("classification", "multilabel"):
        lines.append(f"classes ({len(report['classes'])}): {', '.join(report['classes'][:30])}"
                     + (" …" if len(report["classes"]) > 30 else ""))
    for name, split in report["splits"].items():
        detail = (", ".join(f"{c} {n:,}" for c, n in list(split.get("per_class", {}).items())[:30])
                  or ", ".join(f"{k} {v:.4g}" for k, v in split.get("values", {}).items()))
        lines.append(f"  {name:<5} {split['count']:>8,}  {detail}")
        if "without_labels" in split:
            lines.append(f"        {split['labels_per_image']:.2f} labels per image, {split['without_labels']:,} "
                         "image(s) without any label")
    train = report["splits"].get("train", {})
    if "cooccurrence" in train and len(report["classes"]) <= 12:  # wider does not fit a terminal: --json has it
        names = [c[:8] for c in report["classes"]]
        width = max(6, *(len(n) for n in names))
        lines.append("co-occurrence in train (images with both labels):")
        lines.append(" " * (width + 1) + " ".join(n.rjust(width) for n in names))
        lines += [n.rjust(width) + " " + " ".join(str(v).rjust(width) for v in row)
                  for n, row in zip(names, train["cooccurrence"], strict=True)]
    lines += [f"note: {n}" for n in report["notes"]]  # under the counts: which folder became which split, …
    kinds = report["images"]
    if kinds["sizes"]:
        more = f" (+{kinds['distinct_sizes'] - len(kinds['sizes'])} more)" if kinds["distinct_sizes"] > 10 else ""
        lines.append("sizes: " + ", ".join(f"{s} ×{n:,}" for s, n in kinds["sizes"].items()) + more)
        lines.append("modes: " + ", ".join(f"{m} ×{n:,}" for m, n in kinds["modes"].items())
                     + " | formats: " + ", ".join(f"{m} ×{n:,}" for m, n in kinds["formats"].items()))
    dup = report["duplicates"]
    for kind, title in (("within_split", "duplicates within a split"), ("across_splits", "LEAKAGE across splits")):
        if dup[kind]:
            lines.append(f"{title}: {len(dup[kind])} group(s) of identical images")
            lines += [f"  {' = '.join(group)}" for group in dup[kind][:_SHOW]]
            lines += [f"  … {len(dup[kind]) - _SHOW} more (--json lists all)"] if len(dup[kind]) > _SHOW else []
    if not dup["within_split"] and not dup["across_splits"]:
        lines.append("duplicates: none (exact content hash)")
    lines += [f"bad image: {b['path']}: {b['reason']}" for b in report["bad_images"][:_SHOW]]
    if len(report["bad_images"]) > _SHOW:
        lines.append(f"… {len(report['bad_images']) - _SHOW} more bad images (--json lists all)")
    lines += [f"skipped link: {s['link']} -> {s['target']}: {s['reason']}" for s in report["skipped_links"][:_SHOW]]
    if len(report["skipped_links"]) > _SHOW:
        lines.append(f"… {len(report['skipped_links']) - _SHOW} more skipped links (--json lists all)")
    lines += [f"warning: {w}" for w in report["warnings"]]

    return "\n".join(printable(line) for line in lines)
