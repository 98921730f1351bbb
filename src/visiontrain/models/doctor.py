"""The checkpoint doctor: what is in a weights file, which model it fits, and safetensors conversion.

``inspect`` reads safetensors, state_dict ``.pth`` (``weights_only``) and visiontrain runs; ``convert``
turns a state_dict ``.pth`` into ``.safetensors`` plus a JSON sidecar, unwrapping the ``module.`` (DDP)
and ``_orig_mod.`` (torch.compile) prefixes. Neither ever unpickles beyond ``weights_only=True``.

The converted pair is written together (:func:`~visiontrain.fileio.replace_together`): the sidecar, whose
SHA-256 ties it to the weights, is deleted first and renamed in last, so a sidecar never describes other
weights. A ``.safetensors`` of this format without its ``.json`` is a conversion a killed process did not finish;
the next ``convert`` to it redoes it without ``--force`` and deletes the dead process's temps.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from visiontrain.checkpoint.validate import check_safetensors_file
from visiontrain.checkpoint.weights import WeightsFile
from visiontrain.errors import CheckpointError, TrustError, VisiontrainError
from visiontrain.fileio import remove_dead_temps, replace_together
from visiontrain.models.factory import ModelInput
from visiontrain.models.rebuild import read_model_weights, rebuild_model
from visiontrain.models.zoo import fitting_models, on_meta

WEIGHTS_FORMAT = "visiontrain.weights"
_META_FIELDS = ("epoch", "step", "monitor", "created")


def inspect_weights(path: str | Path, find_models: bool = True, trust_pickle: bool = False) -> dict[str, Any]:
    """A JSON-able description of a weights file or run (``trust_pickle``: see :func:`read_weights`).

    >>> import torch, torchvision
    >>> torch.save(torchvision.models.resnet18().state_dict(), "resnet18.pth")
    >>> info = inspect_weights("resnet18.pth")
    >>> info["format"], info["tensors"], info["fits"][0]
    ('pytorch', 122, {'name': 'resnet18', 'exact': True, 'classes': 1000, 'channels': 3, 'shapes_differ': 0})
    """
    w = read_model_weights(path, trust_pickle=trust_pickle)
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in w.tensors.values())
    info: dict[str, Any] = {
        "file": str(w.path), "format": w.format, "nested_in": w.nested_in, "stripped_prefixes": w.stripped,
        "tensors": len(w.tensors), "values": sum(t.numel() for t in w.tensors.values()), "dtypes": dict(dtypes),
        "table": [{"name": k, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                  for k, t in w.tensors.items()],
        "metadata": _metadata(w),
    }
    if w.metadata.get("format") == "visiontrain.checkpoint":
        info["own_model"] = _own_model_fits(w)
    if find_models and not info.get("own_model", {}).get("fits"):

        info["fits"] = fitting_models(w.tensors)
    return info


def _metadata(w: WeightsFile) -> dict[str, Any]:
    meta = w.metadata
    if meta.get("format") != "visiontrain.checkpoint":
        return {k: v for k, v in meta.items() if isinstance(v, str | int | float) and k != "order"}
    out: dict[str, Any] = {"model": meta.get("model"), "classes": meta.get("classes")}
    out.update({k: meta[k] for k in _META_FIELDS if k in meta})
    out["metrics"] = {k: round(v, 4) for k, v in (meta.get("metrics") or {}).items() if isinstance(v, int | float)}
    return out


def _own_model_fits(w: WeightsFile) -> dict[str, Any]:
    """Rebuild the model the sidecar names and compare: the check ``visiontrain.load`` would make."""

    meta = w.metadata
    try:
        prep = meta["preprocessing"]
        inp = ModelInput(int(prep["channels"]), int(prep["size"]), len(meta["classes"]))
        with on_meta():
            side = w.path.with_suffix(".json")  # the sidecar, or this file when its header stood in for one
            sd = rebuild_model(meta["model"], inp, where=side if side.is_file() else w.path).state_dict()
    except TrustError:
        raise  # a sidecar naming code is refused, not reported as a misfit
    except (VisiontrainError, KeyError, TypeError, ValueError) as exc:
        return {"fits": False, "name": str((meta.get("model") or {}).get("name")), "problem": str(exc)}
    differ = [k for k in sd if k not in w.tensors or tuple(sd[k].shape) != tuple(w.tensors[k].shape)]
    extra = [k for k in w.tensors if k not in sd]
    return {"fits": not differ and not extra, "name": str(meta["model"]["name"]), "differ": differ[:5],
            "extra": extra[:5]}


def convert_to_safetensors(path: str | Path, out: str | Path | None = None, force: bool = False,
                           trust_pickle: bool = False) -> dict[str, Any]:
    """Write ``out`` (default: beside the input, ``.safetensors``) and its ``.json`` sidecar.

    >>> import torch, torchvision
    >>> weights = torchvision.models.resnet18().state_dict()
    >>> torch.save({"module." + k: v for k, v in weights.items()}, "ddp_model.pth")  # as saved from DDP
    >>> done = convert_to_safetensors("ddp_model.pth")
    >>> done["weights"], done["sidecar"], done["stripped_prefixes"], done["fits"][0]["name"]
    ('ddp_model.safetensors', 'ddp_model.json', {'module.': 122}, 'resnet18')
    """
    src = Path(path)
    w = read_model_weights(src, trust_pickle=trust_pickle)
    if w.format != "pytorch":
        raise CheckpointError(f"{src} is already {w.format}; only PyTorch state_dict files (.pth/.pt) need "
                              "converting")
    target = Path(out) if out else src.with_suffix(".safetensors")
    if target.suffix != ".safetensors":
        target = target.with_suffix(".safetensors")
    remove_dead_temps(target.parent)
    if target.exists() and not force and not _unfinished(target):
        raise CheckpointError(f"{target} exists; pass --out ANOTHER.safetensors or --force to overwrite it")
    # clones: safetensors refuses tensors that share storage (tied weights, views of one buffer)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in w.tensors.items()}
    # the key order is kept in the metadata: safetensors sorts tensors, and --init-match order needs it
    metadata = {"format": WEIGHTS_FORMAT, "source": src.name, "order": json.dumps(list(tensors))}
    blob = safetensors.torch.save(tensors, metadata=metadata)

    sidecar = {
        "format": WEIGHTS_FORMAT, "format_version": 1, "source": str(src),
        "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(), "nested_in": w.nested_in,
        "stripped_prefixes": w.stripped, "tensors": len(tensors),
        "values": sum(t.numel() for t in tensors.values()), "fits": fitting_models(tensors, limit=3),
        "weights": {"file": target.name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__,
    }
    text = json.dumps(sidecar, indent=2) + "\n"
    replace_together({target: blob, target.with_suffix(".json"): text.encode("utf-8")})  # the sidecar last
    return {**sidecar, "weights": str(target), "sidecar": str(target.with_suffix(".json"))}


def _unfinished(target: Path) -> bool:
    """A converted .safetensors whose sidecar never got renamed in: a conversion a killed process left."""
    if target.with_suffix(".json").exists():
        return False

    try:
        check_safetensors_file(target)  # the header is sound before the library reads it
        with safetensors.safe_open(str(target), framework="pt") as f:
            return (f.metadata() or {}).get("format") == WEIGHTS_FORMAT
    except (CheckpointError, safetensors.SafetensorError, OSError, ValueError):
        return False  # not one of ours: it is kept, and --force is needed to replace it
