"""Checks made before anything in a checkpoint file is used: the safetensors header and the JSON sidecar.

A file from elsewhere (or damaged on disk) must fail here with one line naming it, not deep inside
``safetensors``, ``torch`` or a model builder. The safetensors library refuses malformed headers itself;
:func:`check_safetensors` repeats those checks so the answer does not depend on its version, reads a
header only after its declared length was checked against the file size and a limit, and gives one
message style. :func:`check_sidecar` is a small schema for ``best.json``/``last.json``: types, sizes,
and the preprocessing a model is rebuilt from.

>>> import struct
>>> check_safetensors(struct.pack("<Q", 2) + b"{}", "empty.safetensors")
{}
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from visiontrain import limits
from visiontrain.errors import CheckpointError

MAX_HEADER_BYTES = 64 * 2**20  # a ResNet-152 checkpoint's header is ~60 KB; a resume file's a few MB at most
MAX_CLASSES = limits.MAX_CLASSES
MAX_NAME_CHARS = 1_000
SIZE_RANGE = (8, limits.MAX_IMAGE_SIZE)  # input side in pixels (as config's data.image_size)
TASKS = ("classification", "regression", "multilabel")
# Bytes per element of the safetensors dtypes torch can hold.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DAMAGED = "the file is damaged or is not a safetensors file — use the run's other checkpoint (last/best)"


def check_safetensors(data: bytes | memoryview, where: str | Path) -> dict[str, Any]:
    """The header of a whole safetensors file in memory, after checking every offset; raises CheckpointError."""
    length = _header_length(bytes(data[:8]), len(data), where)
    return _check_header(bytes(data[8:8 + length]), len(data) - 8 - length, where)


def check_safetensors_file(path: Path) -> dict[str, Any]:
    """Like :func:`check_safetensors`, reading only the header from disk (the declared size is checked first)."""
    try:
        with path.open("rb") as fh:
            size = path.stat().st_size
            length = _header_length(fh.read(8), size, path)
            raw = fh.read(length)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc}); check the path") from None
    return _check_header(raw, size - 8 - length, path)


def _header_length(first: bytes, size: int, where: str | Path) -> int:
    if size < 8 or len(first) < 8:
        raise _bad(where, f"only {size} bytes, too short for one")
    (length,) = struct.unpack("<Q", first)
    if length > MAX_HEADER_BYTES:
        raise _bad(where, f"its header declares {length:,} bytes, over the {MAX_HEADER_BYTES:,}-byte limit")
    if 8 + length > size:
        raise _bad(where, f"its {length:,}-byte header runs past the end of the {size:,}-byte file: cut short?")
    return length


def _check_header(raw: bytes, data_bytes: int, where: str | Path) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad(where, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(where, "its header is not a JSON object")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _bad(where, "its metadata must map names to strings")
            continue
        spans.append((*_span(name, entry, where), name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:  # in order, no overlap, no gap: the layout every writer produces
            problem = "overlaps another tensor" if begin < end else "leaves a gap before it"
            raise _bad(where, f"tensor {name!r} {problem} (offset {begin}, expected {end})")
        end = stop
    if end != data_bytes:
        raise _bad(where, f"the tensors cover {end:,} bytes but {data_bytes:,} follow the header: cut short or padded")
    return header


def _span(name: str, entry: Any, where: str | Path) -> tuple[int, int]:
    """(begin, end) of one tensor's bytes, after checking its dtype, shape and offsets agree."""
    bad = f"tensor {name[:80]!r}"
    if not isinstance(entry, dict):
        raise _bad(where, f"{bad} has no dtype/shape/offsets entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise _bad(where, f"{bad} has an unsupported dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise _bad(where, f"{bad} has an invalid shape {str(shape)[:60]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise _bad(where, f"{bad} has invalid data offsets {str(offsets)[:60]}")
    if math.prod(shape) * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        raise _bad(where, f"{bad}: shape {shape} of {dtype} does not match its {offsets[1] - offsets[0]:,} bytes")
    return offsets[0], offsets[1]


def _bad(where: str | Path, detail: str) -> CheckpointError:
    return CheckpointError(f"{where}: not a valid safetensors file ({detail}); {_DAMAGED}")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


# -- the JSON sidecar ---------------------------------------------------------------------------------------

def check_sidecar(meta: dict[str, Any], path: Path) -> None:
    """Schema of a checkpoint sidecar (beyond ``format``): raises CheckpointError naming the file and field."""
    checks = [
        ("format_version", _is_int(meta.get("format_version"), 1, 10**6), "a positive integer"),
        ("model", isinstance(meta.get("model"), dict), "an object"),
        ("classes", _names(meta.get("classes")), f"a list of 1 to {MAX_CLASSES:,} class names (strings)"),
        ("preprocessing", isinstance(meta.get("preprocessing"), dict), "an object"),
        ("weights", isinstance(meta.get("weights"), dict), "an object"),
        ("metrics", meta.get("metrics") is None or isinstance(meta["metrics"], dict), "an object"),
        ("config", meta.get("config") is None or isinstance(meta["config"], dict), "an object"),
        ("task", meta.get("task") is None or meta["task"] in TASKS, " or ".join(TASKS)),
        ("task", meta.get("task") != "regression" or len(meta.get("classes") or ()) == 1,
         "classification for a model with several classes (a regression model has one output, 'value')"),
        ("thresholds", meta.get("thresholds") is None or _thresholds(meta["thresholds"], meta.get("classes")),
         "a list of one number in [0, 1] per class"),
    ]
    _raise_first(checks, path)
    model, prep, weights = meta["model"], meta["preprocessing"], meta["weights"]
    head = model.get("head")
    channels = prep.get("channels")
    checks = [
        ("model.name", isinstance(model.get("name"), str) and 0 < len(model["name"]) <= 200, "a model name"),
        ("model.args", model.get("args") is None or isinstance(model["args"], dict), "an object"),
        ("model.head", head is None or (isinstance(head, list) and len(head) <= 16
                                        and all(_is_int(w, 1, 2**20) for w in head)),
         "null or a list of layer widths"),
        ("preprocessing.channels", channels in (1, 3) and not isinstance(channels, bool), "1 or 3"),
        ("preprocessing.size", _is_int(prep.get("size"), *SIZE_RANGE), f"an integer in {SIZE_RANGE}"),
        ("preprocessing.mean", _numbers(prep.get("mean"), channels, -math.inf), "one number per channel"),
        ("preprocessing.std", _numbers(prep.get("std"), channels, 1e-12), "one positive number per channel"),
        ("preprocessing.eval_transforms", _specs(prep.get("eval_transforms", [])), "a list of transform objects"),
        ("weights.file", isinstance(weights.get("file"), str) and 0 < len(weights["file"]) <= 255, "a file name"),
        ("weights.sha256", weights.get("sha256") is None or (isinstance(weights["sha256"], str)
                                                             and bool(_SHA256.fullmatch(weights["sha256"]))),
         "64 hex digits"),
        ("weights.bytes", weights.get("bytes") is None or _is_int(weights["bytes"], 0, 2**62), "a byte count"),
    ]
    _raise_first(checks, path)


def _raise_first(checks: list[tuple[str, bool, str]], path: Path) -> None:
    for key, ok, wanted in checks:
        if not ok:
            raise CheckpointError(f"{path}: field {key!r} must be {wanted}; the sidecar is damaged or was edited "
                                  "by hand — use the run's other checkpoint (last/best)")


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _names(value: Any) -> bool:
    return (isinstance(value, list) and 0 < len(value) <= MAX_CLASSES
            and all(isinstance(c, str) and len(c) <= MAX_NAME_CHARS for c in value))


def _numbers(value: Any, length: Any, low: float) -> bool:
    return (isinstance(value, list) and len(value) == length
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= low
                    for v in value))


def _specs(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= 64 and all(
        isinstance(s, dict) and isinstance(s.get("name"), str) for s in value)


def _thresholds(value: Any, classes: Any) -> bool:
    """A multi-label model's decision thresholds: one number in [0, 1] per class."""
    return (isinstance(value, list) and isinstance(classes, list) and len(value) == len(classes)
            and all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1 for v in value))
