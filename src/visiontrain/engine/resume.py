"""Exact resume: the whole training state in ONE safetensors file, written atomically.

``checkpoints/resume.safetensors`` holds tensors (model, EMA, optimizer state, RNG states, running
sums) and, in its header metadata, JSON for everything else (counters, schedule, scaler, callback state,
Python/NumPy RNG). One file means one atomic rename: a crash leaves the previous resume point whole, and
resuming never unpickles anything.

Every resume point also records a fingerprint of the sample order consumed so far; on resume the same
fingerprint is recomputed from the data as configured now, so a resumed run proves it continues the
very stream the interrupted one was reading.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from visiontrain.checkpoint.validate import check_safetensors
from visiontrain.data.loaders import Loader
from visiontrain.engine.metrics import scalar_metrics
from visiontrain.engine.optim import STEP_FLAGS
from visiontrain.engine.state import TrainState
from visiontrain.errors import CheckpointError
from visiontrain.fileio import atomic_write_bytes
from visiontrain.limits import parse_json

FORMAT = "visiontrain.resume"
VERSION = 1


def stream_fingerprint(loader: Loader, epoch: int, batches: int) -> str:
    """SHA-256 of every sample index consumed up to (epoch, batches), in order."""
    h = hashlib.sha256(f"n={loader.num_samples};bs={loader.batch_size}".encode())
    for e in range(epoch):
        h.update(loader.order(e).to(torch.int64).numpy().tobytes())
    h.update(loader.order(epoch)[: batches * loader.batch_size].to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def save_resume(path: Path, state: TrainState, loader: Loader, callback_state: dict[str, Any],
                elapsed: float) -> None:
    tensors: dict[str, torch.Tensor] = {}
    meta = {
        "format": FORMAT, "version": VERSION,
        "epoch": state.epoch, "step": state.step, "batch_in_epoch": state.batch_in_epoch,
        "fingerprint": stream_fingerprint(loader, state.epoch, state.batch_in_epoch),
        "model": _pack(state.raw_model.state_dict(), "model", tensors),
        "ema": _pack(state.ema.state_dict(), "ema", tensors) if state.ema is not None else None,
        "optimizer": _pack(state.optimizer.state_dict(), "optim", tensors),
        "schedule": state.schedule.state_dict(),
        "scaler": state.precision.scaler.state_dict(),
        "sums": _pack(state.sums, "sums", tensors),
        "rng": _rng_state(tensors),
        "best": state.best,
        "thresholds": state.thresholds,
        "epoch_metrics": scalar_metrics(state.epoch_metrics),  # the last epoch's, for the summary and logs
        "callbacks": callback_state,
        "elapsed_s": elapsed,
    }
    blob = safetensors.torch.save(tensors, metadata={"visiontrain": json.dumps(meta)})
    atomic_write_bytes(path, blob)


def read_resume(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the resume state ({exc.strerror or exc}); the run has no "
                              "resume point yet (it must finish a checkpoint first)") from None
    check_safetensors(blob, path)  # offsets, sizes and dtypes, before the library touches the bytes
    try:
        with safetensors.safe_open(path, framework="pt") as fh:
            header = fh.metadata() or {}
        meta = parse_json(header["visiontrain"])
        tensors = safetensors.torch.load(blob)
    except (safetensors.SafetensorError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a valid visiontrain resume file ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version", 99) > VERSION:
        raise CheckpointError(f"{path}: unknown resume format {meta.get('format')!r} v{meta.get('version')}")
    return meta, tensors


def restore(state: TrainState, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
            before_optimizer: Callable[[], None] | None = None) -> None:
    """Put a resume point back into ``state`` (model, EMA, optimizer, schedule, scaler, RNG, counters).

    ``before_optimizer`` runs once the counters are set and before the optimizer state is loaded (the
    callbacks' ``on_resume``)."""
    state.epoch, state.step, state.batch_in_epoch = meta["epoch"], meta["step"], meta["batch_in_epoch"]
    if before_optimizer is not None:
        before_optimizer()
    state.raw_model.load_state_dict(_unpack(meta["model"], tensors))
    if state.ema is not None and meta.get("ema") is not None:
        state.ema.load_state_dict(_unpack(meta["ema"], tensors))
    saved = _unpack(meta["optimizer"], tensors)
    # This device's way of stepping, put into the saved groups before loading: torch places each state tensor by
    # the saved groups' flags (a fused step keeps Adam's `step` on the parameter's device, an unfused one on the
    # CPU), so a run saved on a GPU continues unfused on a CPU and one saved on a CPU continues fused on a GPU.
    for group, own in zip(saved.get("param_groups", []), state.optimizer.param_groups, strict=False):
        group.update({k: own[k] for k in STEP_FLAGS if k in own})
    state.optimizer.load_state_dict(saved)
    state.schedule.load_state_dict(meta["schedule"])
    state.precision.scaler.load_state_dict(meta["scaler"])
    state.sums = {k: v.to(state.device) for k, v in _unpack(meta["sums"], tensors).items()}
    state.best = meta.get("best")
    state.thresholds = meta.get("thresholds")
    state.epoch_metrics = dict(meta.get("epoch_metrics") or {})
    state.elapsed_before = float(meta.get("elapsed_s", 0.0))
    _set_rng(meta["rng"], tensors)


def _rng_state(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    tensors["rng.torch"] = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for i, s in enumerate(cuda):
        tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, py_gauss = random.getstate()
    return {"cuda": len(cuda), "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), py_gauss]}


def _set_rng(rng: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(rng["cuda"])])
    kind, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = rng["python"]
    random.setstate((version, tuple(internal), py_gauss))


def _pack(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested state → JSON with tensors moved to ``tensors`` (referenced as {"__tensor__": key})."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _pack(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _pack(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_pack(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a resume file")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: _unpack(v, tensors) for k, v in obj["__items__"]}
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj
