"""Run an exported model (ONNX through onnxruntime, TorchScript, ``torch.export`` .pt2) on its own.

Every export visiontrain writes carries its class names and preprocessing in the file's metadata, so an
:class:`ExportedModel` offers what a checkpoint's :class:`~visiontrain.use.loading.LoadedModel` offers —
``classes``, ``prep``, ``transform()``, ``logits()`` — and ``predict``, ``evaluate``-style loops and
``serve`` treat both alike (:func:`load_model`).

The exported graph takes the *normalized* float batch [N, C, H, W] (``(pixel/255 - mean)/std``) and
returns logits; the normalization constants are in the metadata for anyone calling the file directly.

A ``.pt2`` is loaded only when the caller trusts it (``trust_code=True``, ``--trust-code``): it is a program, and
``torch.export.load`` runs code from it — a pickle in any member (its safe load falls back to a full unpickle,
pytorch#153410), the Python source of its guards, and its shape expressions (``sympy.sympify`` is ``eval``).

>>> from visiontrain.use.export import export
>>> m = load_model(export("runs/demo", "torchscript").path)  # a run folder or checkpoint loads the same way
>>> m.classes, m.format
(['circle', 'square', 'triangle', 'cross'], 'torchscript')
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from visiontrain.data import Preprocessing
from visiontrain.engine.setup import resolve_device
from visiontrain.errors import CheckpointError
from visiontrain.limits import parse_json
from visiontrain.optional import require
from visiontrain.use.export.graph import from_normalized, has_preprocessing
from visiontrain.use.loading import LoadedModel, UsableModel, load

Forward = Callable[[torch.Tensor], torch.Tensor]
_Loaded = tuple[Forward, str | None]  # what a format's loader returns: the forward and the metadata text
META_KEY = "visiontrain.json"  # the metadata entry's name in every export format
EXPORT_FORMAT = "visiontrain.export"
# file name ending → export format; the longest ending is tried first ("x.torchscript.pt" before ".pt").
SUFFIXES: dict[str, str] = {".onnx": "onnx", ".torchscript.pt": "torchscript", ".torchscript": "torchscript",
                            ".pt2": "pt2", ".openvino.xml": "openvino"}
OPENVINO_META = ["visiontrain", "metadata"]  # where an OpenVINO IR keeps the metadata (its rt_info)


class UntrustedExport(CheckpointError):
    """An export that can run code when loaded, and the caller did not say it trusts it."""


@dataclass
class ExportedModel(UsableModel):
    """An exported model with the class names and preprocessing read from its own metadata."""

    forward: Forward  # normalized float [N, C, H, W] → logits
    meta: dict[str, Any]
    prep: Preprocessing
    device: torch.device
    path: Path
    format: str

    def net(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)


def export_format(path: str | Path) -> str | None:
    """The export format a file name says (``model.onnx`` → ``"onnx"``), or None for anything else."""
    name = Path(path).name.lower()
    return next((fmt for suffix, fmt in sorted(SUFFIXES.items(), key=lambda kv: -len(kv[0]))
                 if name.endswith(suffix)), None)


def load_model(path: str | Path, device: str = "auto", threads: int | None = None, *,
               trust_code: bool = False, model_spec: str | None = None) -> LoadedModel | ExportedModel:
    """A checkpoint/run folder (:func:`visiontrain.load`) or an export file (by its name ending)."""
    if export_format(path) is not None and Path(path).is_file():
        return load_exported(path, device, threads, trust_code=trust_code)
    return load(path, device=device, trust_code=trust_code, model_spec=model_spec)


def load_exported(path: str | Path, device: str = "auto", threads: int | None = None, *,
                  trust_code: bool = False, format: str | None = None) -> ExportedModel:
    """Load an export written by ``visiontrain export``; the metadata must be visiontrain's.

    ``threads`` caps onnxruntime's threads per call (a server running calls side by side wants 1).
    ``trust_code`` lets a ``.pt2`` load (see above); ``format`` overrides the one the name says (a temp file).
    """
    p = Path(path)
    fmt = format or export_format(p)
    if fmt is None:
        raise CheckpointError(f"{p}: not an export file; visiontrain writes .onnx, .torchscript.pt, .pt2 and "
                              ".openvino.xml files (`visiontrain export RUN --format onnx`)")
    if not p.is_file():
        raise CheckpointError(f"{p} does not exist; export a run first: visiontrain export RUN --format {fmt}")
    if fmt == "pt2" and not trust_code:  # refused before torch reads a byte of it
        raise UntrustedExport(f"{p}: not loaded — a .pt2 is a program and torch.export.load runs code from it "
                              "(pickles, guard source, shape expressions), so it loads only with --trust-code "
                              "(trust_code=True), for a file you exported yourself; or use an ONNX export: "
                              "visiontrain export RUN --format onnx")
    dev = resolve_device(device)
    forward, text = _LOADERS[fmt](p, dev, threads)
    meta = _parse_meta(text, p)
    try:
        prep = Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: the export's preprocessing metadata is damaged ({exc})") from None
    if has_preprocessing(meta):  # uint8 pixels in, probabilities out: wrapped to the float → logits contract
        forward = from_normalized(forward, meta, prep)
    return ExportedModel(forward, meta, prep, dev, p, fmt)


def _parse_meta(text: str | None, path: Path) -> dict[str, Any]:
    try:
        meta = parse_json(text) if text else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path}: has no visiontrain metadata (class names, preprocessing); export it with "
                              "`visiontrain export`, which writes them into the file")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: the export's 'classes' metadata must be a non-empty list of names")
    return meta


def _load_onnx(path: Path, device: torch.device,
               threads: int | None = None) -> _Loaded:
    ort = require("onnxruntime", "onnx")
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    providers = [p for p in wanted if p in ort.get_available_providers()]
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for damaged files
        raise CheckpointError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None
    name = session.get_inputs()[0].name

    def forward(x: torch.Tensor) -> torch.Tensor:
        # run() is thread-safe: concurrent requests of the server may share one session.
        x = x.detach() if x.dtype == torch.uint8 else x.detach().float()  # uint8: preprocessing in the graph
        out = session.run(None, {name: x.contiguous().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    return forward, session.get_modelmeta().custom_metadata_map.get(META_KEY)


def _load_torchscript(path: Path, device: torch.device, threads: int | None = None) -> _Loaded:
    extra = {META_KEY: ""}
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in favour of .pt2; it still loads fine
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a TorchScript file torch can load ({str(exc).splitlines()[0]})") from None
    module.eval()
    return _no_grad(module), extra[META_KEY] or None


def _load_pt2(path: Path, device: torch.device, threads: int | None = None) -> _Loaded:
    """Only ever reached with trust_code (see load_exported): torch.export.load runs code from the file."""
    import io
    import zipfile

    extra = {META_KEY: ""}
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # it logs a traceback for a damaged file before raising: one line is ours
    try:
        # from a buffer: a file torch reads by name must end in .pt2, and verify() loads a temp file
        program = torch.export.load(io.BytesIO(path.read_bytes()), extra_files=extra)
    except (RuntimeError, ValueError, KeyError, AssertionError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a torch.export .pt2 file ({str(exc).splitlines()[0]})") from None
    finally:
        logger.setLevel(level)
    module = program.module().to(device)
    return _no_grad(module), extra[META_KEY] or None


def _no_grad(module: Forward) -> Forward:
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x.float())

    return forward


def _load_openvino(path: Path, device: torch.device, threads: int | None = None) -> _Loaded:
    ov = require("openvino", "openvino")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: OpenVINO cannot read it ({str(exc).strip().splitlines()[0][:200]})") from None
    text = model.get_rt_info(OPENVINO_META).astype(str) if model.has_rt_info(OPENVINO_META) else None
    config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    compiled = core.compile_model(model, "CPU", config)
    dtype = torch.uint8 if compiled.input(0).get_element_type() == ov.Type.u8 else torch.float32
    # one infer request per thread: a request holds its outputs (the server calls side by side), and making one
    # per call costs more than a small net's whole inference
    requests = threading.local()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not hasattr(requests, "request"):
            requests.request = compiled.create_infer_request()
        out = requests.request.infer([x.detach().to(dtype).contiguous().cpu().numpy()])
        return torch.from_numpy(next(iter(out.values())).copy()).to(x.device)

    return forward, text


_LOADERS: dict[str, Callable[[Path, torch.device, int | None], _Loaded]] = {
    "onnx": _load_onnx,
    "openvino": _load_openvino,
    "torchscript": _load_torchscript,
    "pt2": _load_pt2,
}
