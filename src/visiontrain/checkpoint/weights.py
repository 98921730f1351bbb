"""Read weights from any file people bring: safetensors, a PyTorch state_dict, or a visiontrain run.

Nothing here unpickles Python objects: ``.pth``/``.pt``/``.tar`` files go through
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. A file that needs
more (a whole model saved with ``torch.save(model)``) is refused with a line saying how to re-save it,
unless the caller passes ``trust_pickle=True`` (``--trust-pickle``): then it is unpickled in full, which
runs whatever code the file carries, after a warning on stderr.
Keys wrapped by DDP (``module.``) or ``torch.compile`` (``_orig_mod.``) are unwrapped.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from visiontrain.checkpoint.format import load_weights, read_sidecar, resolve_checkpoint
from visiontrain.checkpoint.validate import check_safetensors_file
from visiontrain.errors import CheckpointError
from visiontrain.limits import MAX_SIDECAR_BYTES, parse_json, read_capped

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Where training scripts commonly nest the state_dict inside a checkpoint dict, in order of preference.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params", "ema")


@dataclass
class WeightsFile:
    """Tensors read from a file, with what was learned about it on the way."""

    path: Path
    format: str  # "safetensors" | "pytorch" | "visiontrain"
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    stripped: dict[str, int] = field(default_factory=dict)  # wrapper prefix → keys unwrapped
    nested_in: str | None = None  # the checkpoint-dict key the state_dict was found under
    ordered: bool = True  # keys are in the model's state_dict order (safetensors alone sorts them)


def sniff(path: Path) -> str:
    """The format from the file's first bytes (suffixes lie: the notes' MobileNet is a .tar, docs/cookbook.md §11)."""
    if path.is_dir() or path.suffix == ".json":
        return "visiontrain"
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc}); check the path") from None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "pytorch"  # zip archive (torch.save) or a legacy pickle stream
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte header length, then the JSON header
    raise CheckpointError(f"{path}: not a safetensors file, a PyTorch state_dict or a visiontrain run; "
                          "give a .safetensors, .pth/.pt or a run folder")


# A visiontrain checkpoint's sidecar → its tensor names in the model's state_dict order (models.assembly
# rebuilds the model it names, on the meta device); None when that is not possible.
SidecarOrder = Callable[[dict[str, Any], Path], list[str] | None]


def read_weights(path: str | Path, trust_pickle: bool = False, order: SidecarOrder | None = None) -> WeightsFile:
    """Tensors of a weights file or run folder, keys unwrapped from ``module.``/``_orig_mod.``.

    ``trust_pickle`` lets a ``.pth`` that pickles Python objects (a whole model) be unpickled in full —
    which runs any code inside it; without it such a file is a :class:`CheckpointError`. ``order`` gives a
    visiontrain checkpoint's tensor order (safetensors sorts tensors by name; order matching needs the real one).

    >>> w = read_weights("runs/demo")  # a run folder: its best checkpoint
    >>> w.format, len(w.tensors), tuple(w.tensors["0.weight"].shape)
    ('visiontrain', 20, (16, 3, 5, 5))
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; give a weights file (.safetensors, .pth) or a run folder")
    kind = sniff(p)
    result = _READERS[kind](p, trust_pickle)
    if kind != "pytorch":
        _restore_order(result, order)
    result.tensors, result.stripped = strip_wrappers(result.tensors)
    if not result.tensors:
        raise CheckpointError(f"{p} holds no tensors")
    return result


def _read_safetensors(path: Path, _trust_pickle: bool = False) -> WeightsFile:
    check_safetensors_file(path)  # offsets, sizes and dtypes, before the library touches the bytes
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged safetensors file ({exc})") from None
    sidecar = path.with_suffix(".json")
    ours = metadata.get("format") == "visiontrain.checkpoint"
    if ours:  # the header's copy of the sidecar is JSON text, unchecked: only a checked copy describes the tensors
        metadata = {"format": metadata["format"]}
    if sidecar.is_file():
        try:
            side = parse_json(read_capped(sidecar, MAX_SIDECAR_BYTES, "a checkpoint sidecar"))
            if isinstance(side, dict) and side.get("format") == "visiontrain.checkpoint":
                read_sidecar(sidecar)  # only a sidecar that passes its schema describes the tensors
            metadata.update(side if isinstance(side, dict) else {})
        except (OSError, ValueError, RecursionError, CheckpointError):
            pass  # a broken sidecar does not make the tensors unreadable
    elif ours:  # alone: the copy of the sidecar in its header, parsed and checked as the sidecar would be
        with contextlib.suppress(CheckpointError):  # a damaged header does not make the tensors unreadable either
            metadata.update(read_sidecar(sidecar))
    return WeightsFile(path, "safetensors", tensors, metadata)


def _read_pytorch(path: Path, trust_pickle: bool = False) -> WeightsFile:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing what is unsafe
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise CheckpointError(f"{path} is not a plain state_dict: it pickles Python objects (e.g. a whole model "
                                  "saved with torch.save(model)), which visiontrain will not unpickle because that "
                                  "can run code; re-save it with torch.save(model.state_dict(), path), or pass "
                                  "--trust-pickle if you made this file yourself") from None
        obj = _unpickle_trusted(path)
    except Exception as exc:  # a damaged file fails in many ways (zip, pickle, even torch's safetensors sniffing)
        raise CheckpointError(f"{path}: not a readable PyTorch file ({_first_line(exc)})") from None
    # the notes' "method 1" (docs/cookbook.md §8, save and load): the whole model; its weights are what we need
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    tensors, nested = _find_state_dict(obj, path)
    return WeightsFile(path, "pytorch", tensors, nested_in=nested)


def _unpickle_trusted(path: Path) -> Any:
    """Full unpickling, asked for with ``--trust-pickle``: the file's code runs here, so say so first."""
    print(f"warning: --trust-pickle: unpickling {path} in full, which runs any code the file carries; do this only "
          "for files you made yourself, and convert it once: torch.save(model.state_dict(), path)",
          file=sys.stderr, flush=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (UserWarning, FutureWarning))
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # the pickle's own classes and code: anything can fail in there
        raise CheckpointError(f"{path}: cannot unpickle it even with --trust-pickle ({type(exc).__name__}: "
                              f"{_first_line(exc)}); the classes it pickles must be importable here — run from "
                              "the project that defined the model") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _find_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    if isinstance(obj, Mapping):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors, None  # a state_dict, perhaps with an 'epoch' or two beside it
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}, key
    keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{path}: found no state_dict in it (top level: {keys}); save one with "
                          "torch.save(model.state_dict(), path)")


def _read_visiontrain(path: Path, _trust_pickle: bool = False) -> WeightsFile:
    sidecar = resolve_checkpoint(path)
    meta = read_sidecar(sidecar)
    if not sidecar.is_file():  # a lone .safetensors described itself: it is the file to name
        sidecar = sidecar.with_suffix(".safetensors")
    return WeightsFile(sidecar, "visiontrain", load_weights(sidecar, meta), meta)


def _restore_order(w: WeightsFile, sidecar_order: SidecarOrder | None) -> None:
    """safetensors stores tensors sorted, not in state_dict order; order matching needs the real order. It
    comes from an ``order`` metadata entry (``checkpoint convert`` writes one) or, for a visiontrain
    checkpoint, from ``sidecar_order`` (rebuilding the model its sidecar names)."""
    order = None
    if isinstance(w.metadata.get("order"), str):
        try:
            order = parse_json(w.metadata["order"])
        except ValueError:
            order = None
    elif w.metadata.get("format") == "visiontrain.checkpoint" and sidecar_order is not None:
        side = w.path.with_suffix(".json")  # the sidecar, or this file when its header stood in for one
        order = sidecar_order(w.metadata, side if side.is_file() else w.path)
    w.ordered = isinstance(order, list) and set(order) == set(w.tensors)
    if w.ordered:
        w.tensors = {k: w.tensors[k] for k in order}  # type: ignore[union-attr]


_READERS = {"safetensors": _read_safetensors, "pytorch": _read_pytorch, "visiontrain": _read_visiontrain}


def strip_wrappers(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Drop ``module.``/``_orig_mod.`` (DDP, torch.compile) where every key carries it, repeatedly."""
    stripped: dict[str, int] = {}
    changed = True
    while changed and tensors:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                stripped[prefix] = stripped.get(prefix, 0) + len(tensors)
                tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
                changed = True
    return tensors, stripped
