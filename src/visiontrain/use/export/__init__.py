"""Exports: writing a checkpoint as ONNX, TorchScript or ``.pt2`` and verifying it (:mod:`.write`), the files an
export leaves on disk (:mod:`.files`), and running an export on its own (:mod:`.runtime`).

>>> from visiontrain.use.export import export, load_exported
>>> r = export("runs/demo", "torchscript")  # "onnx" too, with the onnx extra
>>> load_exported(r.path).classes
['circle', 'square', 'triangle', 'cross']

The names load on first use (PEP 562): ``predict`` reads exports through :mod:`.runtime` and never loads the
writers (quantization, the evaluation they verify with).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visiontrain.use.export.runtime import ExportedModel, load_exported
    from visiontrain.use.export.write import ExportError, ExportResult, export

_HOMES = {"ExportedModel": "runtime", "load_exported": "runtime", "ExportError": "write", "ExportResult": "write",
          "export": "write"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # looked up once
    return value


__all__ = ["ExportError", "ExportResult", "ExportedModel", "export", "load_exported"]
