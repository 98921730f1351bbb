"""Checkpoints: weights in safetensors plus a JSON sidecar with everything needed to use them.

``best.safetensors`` holds tensors only — loading it can never run code. ``best.json`` names the model
and its arguments, the class names, the preprocessing, metrics and versions, and the SHA-256 of the
weights file, so a sidecar that does not belong to its weights (say, a crash between the two writes) is
caught instead of silently producing a wrong model. Both files are written atomically.

The sidecar stays the primary, but the same fields also travel in the safetensors header (``__metadata__``,
each a JSON string; the weights' own hash excepted), so a ``best.safetensors`` copied alone still loads: its
header is then read as the sidecar and passes the same checks — and, in :mod:`visiontrain.use.loading`, the same
trust rules (a file never names code).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from visiontrain import limits
from visiontrain.checkpoint.validate import check_safetensors, check_safetensors_file, check_sidecar
from visiontrain.errors import CheckpointError
from visiontrain.fileio import atomic_write_bytes, atomic_write_json
from visiontrain.versions import library_versions

FORMAT = "visiontrain.checkpoint"
FORMAT_VERSION = 1
_REQUIRED = {"format": str, "format_version": int, "model": dict, "classes": list, "preprocessing": dict,
             "weights": dict}


def save_checkpoint(stem: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``stem.safetensors`` then ``stem.json``; returns the sidecar's path."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in raw_model(model).state_dict().items()}
    described = {"format_version": FORMAT_VERSION, **meta, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "versions": library_versions()}
    header = {"format": FORMAT, **{key: json.dumps(value) for key, value in described.items()}}
    blob = safetensors.torch.save(tensors, metadata=header)
    weights = stem.with_suffix(".safetensors")
    atomic_write_bytes(weights, blob)
    sidecar = {"format": FORMAT, **described,
               "weights": {"file": weights.name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}}
    return atomic_write_json(stem.with_suffix(".json"), sidecar)


def read_sidecar(path: Path) -> dict[str, Any]:
    """Read and check a checkpoint's JSON sidecar; every problem names the file. Without one, the copy in the
    header of the ``.safetensors`` beside it (:func:`header_meta`) is read and checked the same way."""
    try:
        meta = limits.parse_json(limits.read_capped(path, limits.MAX_SIDECAR_BYTES, "a checkpoint sidecar"))
    except FileNotFoundError:
        meta = header_meta(path.with_suffix(".safetensors"), path)
        path = path.with_suffix(".safetensors")
    except (OSError, ValueError) as exc:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise CheckpointError(f"{path}: not a readable checkpoint sidecar ({exc}); the file is damaged — "
                              "use another checkpoint of the run (last/best)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a visiontrain checkpoint sidecar (no 'format': {FORMAT!r})")
    for key, kind in _REQUIRED.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: field {key!r} is missing or not a {kind.__name__}; the sidecar "
                                  "is damaged or was edited by hand")
    if meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer visiontrain (format {meta['format_version']}); "
                              "upgrade visiontrain to read it")
    check_sidecar(meta, path)
    return meta


def header_meta(weights: Path, sidecar: Path) -> dict[str, Any]:
    """The sidecar fields a visiontrain ``.safetensors`` carries in its header (unchecked yet: see read_sidecar)."""
    if not weights.is_file():
        raise CheckpointError(f"{sidecar}: checkpoint sidecar not found; every .safetensors checkpoint needs "
                              "its .json beside it")
    raw = check_safetensors_file(weights).get("__metadata__") or {}
    if raw.get("format") != FORMAT or "model" not in raw:
        raise CheckpointError(f"{sidecar}: checkpoint sidecar not found, and {weights.name} does not carry its "
                              "fields in its header (written by an older visiontrain or another tool); put its "
                              ".json beside it")
    meta: dict[str, Any] = {"format": FORMAT}
    for key, text in raw.items():
        if key != "format":
            try:
                meta[key] = limits.parse_json(text)
            except ValueError:
                raise CheckpointError(f"{weights}: its header's {key!r} is not JSON; the file is damaged — use "
                                      "the run's other checkpoint (last/best)") from None
    meta["weights"] = {"file": weights.name}  # this very file: its header cannot hold its own hash
    return meta


def load_weights(sidecar_path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of the weights file named by ``meta``, after checking its SHA-256."""
    weights = sidecar_path.parent / Path(meta["weights"].get("file", "")).name
    try:
        blob = weights.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{weights}: cannot read the weights file that {sidecar_path.name} names "
                              f"({exc.strerror or exc}); keep the pair together, or use the run's other "
                              "checkpoint (last/best)") from None
    expected = meta["weights"].get("sha256")
    if expected and hashlib.sha256(blob).hexdigest() != expected:
        raise CheckpointError(f"{weights}: weights do not match their sidecar {sidecar_path.name} (SHA-256 "
                              "differs); the pair was not written together — use the run's other checkpoint")
    check_safetensors(blob, weights)  # offsets, sizes and dtypes, before the library touches the bytes
    try:
        return safetensors.torch.load(blob)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({exc})") from None


def load_into(model: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Strictly load ``tensors`` into ``model``: names and shapes must match exactly."""
    expected = raw_model(model).state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    # a checkpoint holds the model's own dtypes; load_state_dict would silently cast anything else
    typed = sorted(k for k in set(expected) & set(tensors) if k not in wrong and expected[k].dtype != tensors[k].dtype)
    if missing or unexpected or wrong or typed:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} with another shape (e.g. {wrong[0]}: {tuple(tensors[wrong[0]].shape)} in the "
                 f"file, {tuple(expected[wrong[0]].shape)} in the model)" if wrong else "",
                 f"{len(typed)} with another dtype (e.g. {typed[0]}: {tensors[typed[0]].dtype} in the file, "
                 f"{expected[typed[0]].dtype} in the model)" if typed else ""]
        raise CheckpointError(f"{where}: weights do not fit the model — " + "; ".join(p for p in parts if p)
                              + "; the sidecar's model name/arguments do not match these weights")
    raw_model(model).load_state_dict(tensors, strict=True)


_PICKLE_SUFFIXES = {".pth", ".pt", ".pkl", ".pickle", ".tar", ".ckpt", ".bin"}


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run folder, a checkpoints folder, a ``.json`` sidecar or a ``.safetensors`` file → the sidecar."""
    p = Path(path)
    if p.suffix == ".json" and not p.exists() and p.with_suffix(".safetensors").is_file():
        return p  # a lone .safetensors: read_sidecar reads the copy in its header
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; pass a run folder (e.g. runs/<name>) or a checkpoint "
                              "file (runs/<name>/checkpoints/best.json)")
    if p.is_dir():
        for candidate in (p / "checkpoints" / f"{which}.json", p / f"{which}.json",
                          p / "checkpoints" / "last.json", p / "last.json"):
            if candidate.is_file() or candidate.with_suffix(".safetensors").is_file():  # (a lone .safetensors)
                return candidate
        raise CheckpointError(f"{p} holds no checkpoint (no checkpoints/{which}.json); did its training "
                              "finish an epoch? pass another run folder")
    if p.suffix == ".safetensors":
        return p.with_suffix(".json")
    if p.suffix in _PICKLE_SUFFIXES:
        raise CheckpointError(f"{p} is a PyTorch pickle/state_dict file, not a visiontrain checkpoint; "
                              "visiontrain loads safetensors + JSON checkpoints (a run folder or its "
                              "checkpoints/best.json)")
    return p


_PARALLEL = (nn.parallel.DistributedDataParallel, nn.DataParallel)


def raw_model(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile and DDP wrappers, in either order: checkpoints always hold the plain
    module's names. (Under torchrun with ``--compile`` the model is compiled first and DDP wraps that, so the
    DDP wrapper comes off first; taking ``_orig_mod`` off first left ``_orig_mod.`` in every saved key.)

    >>> m = nn.Linear(2, 2)
    >>> raw_model(torch.compile(m, backend="eager")) is m
    True
    """
    while True:
        if isinstance(model, _PARALLEL):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
