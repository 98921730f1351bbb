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

import functools
import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from visiontrain import limits
from visiontrain.errors import CheckpointError, ModelError

MAX_HEADER_BYTES = 64 * 2**20  # a ResNet-152 checkpoint's header is ~60 KB; a resume file's a few MB at most
MAX_CLASSES = limits.MAX_CLASSES
MAX_NAME_CHARS = 1_000
SIZE_RANGE = (8, limits.MAX_IMAGE_SIZE)  # input side in pixels (as config's data.image_size)
TASKS = ("classification", "regression")
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


def check_head(model: Any, tensors: dict[str, Any], classes: list[str], path: Path) -> None:
    """The weights' classification layer must have one output per class the sidecar lists: a clear line
    instead of a shape mismatch deep in the model."""
    from visiontrain.models.surgery import find_head  # lazy: models/ imports engine/

    try:
        key = find_head(model, len(classes)) + ".weight"
    except ModelError:
        return  # no recognisable head: the strict load still compares every shape
    outputs = tensors.get(key)
    if outputs is not None and getattr(outputs, "ndim", 0) >= 1 and int(outputs.shape[0]) != len(classes):
        raise CheckpointError(f"{path}: weights do not fit the model — the sidecar lists {len(classes)} classes "
                              f"but the weights' head {key!r} has {int(outputs.shape[0])} outputs; the class list "
                              "and the weights do not belong together — use the run's other checkpoint (last/best)")


# -- the model a sidecar describes, before it is built -------------------------------------------------------

def check_model_budget(spec: dict[str, Any], inp: Any, meta: dict[str, Any], sidecar: Path) -> None:
    """Build the model ``spec`` describes on the meta device (no memory) and refuse it, naming the field, when
    it holds more than twice the values of its weights file (whose header states exactly how many; a small
    mismatch is left to the strict load, which names the tensors) or when one image at
    ``preprocessing.size`` needs more activation memory than the machine has: a sidecar edited to
    ``head: [1048576, 1048576]`` or ``size: 8192`` must not try to allocate terabytes."""
    weights = sidecar.parent / Path(meta["weights"].get("file", "")).name
    try:
        header = check_safetensors_file(weights)
    except CheckpointError:
        return  # load_weights reports a missing or damaged weights file in its own words, after the hash
    stored = sum(math.prod(e["shape"]) for k, e in header.items() if k != "__metadata__")
    try:
        needed = _values(spec, inp)
    except ModelError:
        raise
    except Exception:  # a builder that cannot run on meta: the strict load still checks every shape
        return
    allowed = stored + max(stored, 2**24)  # a model this much bigger than its file cannot be the file's
    if needed > allowed:
        field = _culprit(spec, inp, allowed)
        raise CheckpointError(f"{sidecar}: field {field!r} describes a model of {needed:,} values but the weights "
                              f"file {weights.name} holds {stored:,}; the sidecar is damaged or was edited by hand "
                              "— use the run's other checkpoint (last/best)")
    one, memory = activation_bytes(spec, inp), limits.memory_bytes()
    if one > memory:
        raise CheckpointError(f"{sidecar}: field 'preprocessing.size' ({inp.size}) needs about "
                              f"{limits.size_text(one)} of activations for one image, more than this machine's "
                              f"{limits.size_text(memory)}; the sidecar is damaged or was edited by hand")


def check_batch_memory(meta: dict[str, Any], prep: Any, batch: int, device: Any, where: Any) -> None:
    """A predict/evaluate batch of ``batch`` images at the model's size must fit the device's memory (the
    estimate is a lower bound: the largest layer's input and output, at 4 bytes a value)."""
    spec = meta.get("model")
    inp = _input(prep, len(meta.get("classes") or [0]))
    one = activation_bytes(spec, inp) if isinstance(spec, dict) else 2 * _input_values(inp) * 4
    total, budget = one * batch, limits.memory_bytes(device)
    if total > budget:
        raise CheckpointError(f"{where}: a batch of {batch:,} images at {prep.size}x{prep.size} (its "
                              f"'preprocessing.size') needs about {limits.size_text(total)} of activations, more "
                              f"than the {limits.size_text(budget)} here; lower --batch-size (one image needs "
                              f"{limits.size_text(one)})")


def activation_bytes(spec: dict[str, Any], inp: Any) -> int:
    """Bytes one image needs at the widest layer (its input plus output, float32), from a forward pass on the
    meta device; the input's own size twice over when the model cannot run on meta."""
    try:
        return _widest(json.dumps(spec, sort_keys=True, default=str), inp)
    except Exception:  # any builder/forward failure on meta: fall back to the input's size (still bounded)
        return 2 * _input_values(inp) * 4


@functools.lru_cache(maxsize=16)
def _widest(spec_text: str, inp: Any) -> int:
    import torch

    widest = _input_values(inp) * 2

    def hook(_module: Any, inputs: Any, output: Any) -> None:
        nonlocal widest
        values = sum(t.numel() for t in (*inputs, output) if isinstance(t, torch.Tensor))
        widest = max(widest, values)

    model = _meta_model(json.loads(spec_text), inp)
    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    device = next((p.device for p in model.parameters()), torch.device("meta"))
    with torch.no_grad():
        model.to(device).eval()(torch.zeros(1, inp.channels, inp.size, inp.size, device=device))
    for h in handles:
        h.remove()
    return int(widest) * 4


def _values(spec: dict[str, Any], inp: Any) -> int:
    return sum(t.numel() for t in _meta_model(spec, inp).state_dict().values())


def _culprit(spec: dict[str, Any], inp: Any, stored: int) -> str:
    """Which field made the model too big: the head if the model fits without it, else the input size if the
    model fits at a small one, else the builder arguments."""
    def fits(changed: dict[str, Any], size: int) -> bool:
        try:
            return _values(changed, type(inp)(inp.channels, size, inp.num_classes)) <= stored
        except Exception:  # cannot be built that way: not the answer
            return False

    if spec.get("head") and fits({**spec, "head": None}, inp.size):
        return "model.head"
    return "preprocessing.size" if fits(spec, min(inp.size, 32)) else "model.args"


def _meta_model(spec: dict[str, Any], inp: Any) -> Any:
    from visiontrain.models.build import rebuild_model  # lazy: models/ imports engine/
    from visiontrain.models.zoo import on_meta

    with on_meta():
        return rebuild_model(spec, inp)


def _input(prep: Any, classes: int) -> Any:
    from visiontrain.models.factory import ModelInput

    return ModelInput(prep.channels, prep.size, classes)


def _input_values(inp: Any) -> int:
    return inp.channels * inp.size * inp.size
