"""Checks of the model a checkpoint's sidecar describes, made before it is built and loaded: the head fits the
class list, the model fits its weights file and the machine's memory (built on the meta device first, so a
sidecar edited to ``head: [1048576, 1048576]`` or ``size: 8192`` never tries to allocate terabytes), and a
predict/evaluate batch fits the device.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import torch

from visiontrain import limits
from visiontrain.checkpoint.validate import check_safetensors_file
from visiontrain.errors import CheckpointError, ModelError
from visiontrain.models.factory import ModelInput
from visiontrain.models.rebuild import rebuild_model
from visiontrain.models.surgery import find_head
from visiontrain.models.zoo import on_meta


def check_head(model: Any, tensors: dict[str, Any], classes: list[str], path: Path) -> None:
    """The weights' classification layer must have one output per class the sidecar lists: a clear line
    instead of a shape mismatch deep in the model."""
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
    widest = _input_values(inp) * 2

    def hook(_module: Any, inputs: Any, output: Any) -> None:
        nonlocal widest
        values = sum(t.numel() for t in (*inputs, output) if isinstance(t, torch.Tensor))
        widest = max(widest, values)

    model = _meta_model(json.loads(spec_text), inp)
    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    device = next((p.device for p in model.parameters()), torch.device("meta"))
    with torch.no_grad(), on_meta():
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
    with on_meta():
        return rebuild_model(spec, inp)


def _input(prep: Any, classes: int) -> ModelInput:
    return ModelInput(prep.channels, prep.size, classes)


def _input_values(inp: Any) -> int:
    return inp.channels * inp.size * inp.size
