"""A model back from what a checkpoint says of it: :func:`rebuild_model` builds the architecture a sidecar's
``model`` entry names (its values checked as a file's values: no code named, plain arguments), and
:func:`read_model_weights` reads any weights file, a visiontrain run's tensors in their model's own order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from visiontrain.checkpoint.weights import WeightsFile, read_weights
from visiontrain.config.trust import check_file_values
from visiontrain.errors import TrustError
from visiontrain.models.factory import ModelInput, create_model
from visiontrain.models.surgery import find_head, replace_head
from visiontrain.models.zoo import on_meta


def rebuild_model(spec: dict[str, Any], inp: ModelInput, where: str | Path = "checkpoint",
                  trust_code: bool = False, given: tuple[str, ...] = ()) -> nn.Module:
    """The architecture a checkpoint's ``model`` entry describes (weights are loaded by the caller).

    The entry comes from a file (``where``): it may not name code and its arguments must be plain values
    (:func:`visiontrain.config.trust.check_file_values`) unless ``trust_code``, or the user said it (``given``: the
    keys they restated, e.g. ``("model.name",)`` for ``--model my_model.py:Tudui``).

    >>> rebuild_model({"name": "resnet18", "args": {}, "head": [64]}, ModelInput(3, 32, 5)).fc[2].out_features
    5
    """
    check_file_values({"model": spec}, where, trust_code=trust_code, given=given)
    model = create_model(str(spec["name"]), inp, dict(spec.get("args") or {}))
    if spec.get("head") is not None:
        replace_head(model, inp.num_classes, [int(w) for w in spec["head"]], path=find_head(model, inp.num_classes))
    return model


def sidecar_order(meta: dict[str, Any], sidecar: Path) -> list[str] | None:
    """The tensor names of the model a visiontrain sidecar describes, in its state_dict order (built on the
    meta device: no memory); None when it cannot be built."""
    try:
        prep = meta["preprocessing"]
        inp = ModelInput(int(prep["channels"]), int(prep["size"]), len(meta["classes"]))
        with on_meta():
            return list(rebuild_model(meta["model"], inp, where=sidecar).state_dict())
    except TrustError:
        raise  # a sidecar naming code is refused, not quietly read past
    except Exception:  # an unreadable sidecar only costs the order, not the tensors
        return None


def read_model_weights(path: str | Path, trust_pickle: bool = False) -> WeightsFile:
    """:func:`~visiontrain.checkpoint.weights.read_weights`, with a run's tensors in their model's order."""
    return read_weights(path, trust_pickle=trust_pickle, order=sidecar_order)
