"""Exports: writing a checkpoint as ONNX, TorchScript or ``.pt2`` and verifying it (:mod:`.write`), the files an
export leaves on disk (:mod:`.files`), and running an export on its own (:mod:`.runtime`).

>>> r = export("runs/demo", "torchscript")  # "onnx" too, with the onnx extra
>>> load_exported(r.path).classes
['circle', 'square', 'triangle', 'cross']
"""

from visiontrain.use.export.runtime import ExportedModel, load_exported
from visiontrain.use.export.write import ExportError, ExportResult, export

__all__ = ["ExportError", "ExportResult", "ExportedModel", "export", "load_exported"]
