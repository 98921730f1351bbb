"""``visiontrain export``: a checkpoint as ONNX, TorchScript or a ``torch.export`` .pt2 program.

Each export takes a dynamic batch size, carries the class names and preprocessing in its own metadata
(so ``predict`` and ``serve`` need nothing else), and is verified before it is kept: it is loaded back the
way ``predict`` loads it and run on sample batches of several sizes next to the PyTorch model; the largest
absolute difference of the logits is reported and must stay under ``tolerance``.

The export is written to a temp file beside the target, verified there, and only then renamed onto it: a
failed verification or a killed process leaves the previous export as it was (see ``export_files``).

>>> r = export("runs/demo", "torchscript")  # "onnx" the same way, with the onnx extra
>>> r.path.as_posix(), r.max_abs_diff < 1e-4
('runs/demo/exports/model.torchscript.pt', True)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visiontrain.errors import ConfigError, VisiontrainError
from visiontrain.faults import fault_point
from visiontrain.fileio import commit, temp_beside
from visiontrain.optional import require, require_all
from visiontrain.use.export import files as export_files
from visiontrain.use.export.graph import (
    LAYOUTS,
    WithPreprocessing,
    has_preprocessing,
    output_function,
    pixel_shape,
    to_pixels,
)
from visiontrain.use.export.openvino_ir import convert_onnx, weights_file
from visiontrain.use.export.openvino_ir import set_metadata as set_ir_metadata
from visiontrain.use.export.quantize import (
    CALIBRATION_IMAGES,
    PRECISIONS,
    accuracy_check,
    calibration_batches,
    convert_fp16,
    quantize_int8,
    set_onnx_metadata,
)
from visiontrain.use.export.runtime import EXPORT_FORMAT, META_KEY, SUFFIXES, export_format, load_exported
from visiontrain.use.loading import LoadedModel, load

# torch.onnx writes only with onnx and onnxscript installed (its legacy TorchScript exporter too, in torch 2.14);
# onnxruntime verifies the file. All three are the onnx extra (pyproject.toml).
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "pt2": "model.pt2",
              "openvino": "model.openvino.xml"}
_TRACE_BATCH = 2  # traced at 2, verified at 1 and 5: a batch size baked into the graph cannot pass
_VERIFY_BATCHES = (1, 5)


class ExportError(VisiontrainError):
    """An export that failed or does not match the PyTorch model."""


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    tolerance: float
    metadata: dict[str, Any]
    verification: dict[str, Any] | None = None  # a reduced-precision export's agreement and accuracies


@dataclass(frozen=True)
class Deploy:
    """How an export is made smaller or self-contained (``--with-preprocessing``, ``--quantize``)."""

    with_preprocessing: bool = False
    layout: str = "nhwc"
    quantize: str | None = None
    max_accuracy_drop: float = 1.0
    calibration_images: int = CALIBRATION_IMAGES

    @property
    def staged(self) -> bool:
        """Made in steps (ONNX first, then converted) in a folder of its own, rather than written in one go."""
        return self.with_preprocessing or self.quantize is not None


def _check_deploy(format: str, with_preprocessing: bool, layout: str, quantize: str | None, max_drop: float,
                  calibration_images: int) -> Deploy:
    if with_preprocessing and format not in ("onnx", "openvino"):
        raise ConfigError(f"--with-preprocessing is for --format onnx or openvino, not {format}")
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if quantize is not None and quantize not in PRECISIONS:
        raise ConfigError(f"--quantize {quantize!r}: choose one of {', '.join(PRECISIONS)}")
    if quantize is not None and (format, quantize) not in (("onnx", "int8"), ("onnx", "fp16"), ("openvino", "int8")):
        raise ConfigError(f"--quantize {quantize} is for "
                          + ("--format onnx or openvino" if quantize == "int8" else "--format onnx")
                          + f", not {format}")
    if not math.isfinite(max_drop) or calibration_images < 1:  # a negative drop asks for a gain: allowed
        raise ConfigError(f"--max-accuracy-drop must be a number of points and --calibration-images at least 1, "
                          f"got {max_drop} and {calibration_images}")
    if format == "openvino":
        require_all(ONNX_MODULES, "onnx", "OpenVINO export (converted from ONNX)")
        require("openvino", "openvino")
    if quantize is not None:
        require_all(ONNX_MODULES, "onnx", "a quantized export")
    return Deploy(with_preprocessing, layout, quantize, max_drop, calibration_images)


def export(model: LoadedModel | str | Path, format: str = "onnx", out: str | Path | None = None, *,
           tolerance: float = 1e-3, opset: int | None = None, trust_code: bool = False,
           model_spec: str | None = None, with_preprocessing: bool = False, layout: str = "nhwc",
           quantize: str | None = None, max_accuracy_drop: float = 1.0,
           calibration_images: int = CALIBRATION_IMAGES) -> ExportResult:
    """Export a checkpoint (run folder or sidecar) and verify it; returns where and how close it is.

    ``out`` (a file, or a folder) defaults to ``<run>/exports/model.<ext>``. Raises :class:`ExportError` (and
    keeps the previous export, if any) when the export's logits differ from PyTorch's by more than
    ``tolerance x max(1, largest |logit|)`` (``ExportResult.tolerance`` is that bound). ``opset`` (ONNX) must be
    one the installed exporter writes (:func:`~visiontrain.use.export.files.onnx_opsets`). ``model_spec`` or
    ``trust_code`` let a checkpoint of your own model class load (see :func:`visiontrain.load`).

    ``with_preprocessing`` puts the normalization and channel conversion in the graph (ONNX, OpenVINO): it takes
    uint8 pixels of the saved size in ``layout`` ("nhwc" or "nchw") and returns probabilities (see
    :mod:`~visiontrain.use.export.graph`). ``quantize`` ("int8", "fp16"; ONNX, and int8 for OpenVINO) writes a
    reduced-precision file, calibrated on ``calibration_images`` training images, and refuses it when its accuracy
    on the held-out split is more than ``max_accuracy_drop`` points below the model's
    (``ExportResult.verification``; see :mod:`~visiontrain.use.export.quantize`).
    """
    if format not in FILE_NAMES:
        raise ConfigError(f"unknown export format {format!r}; choose one of: {', '.join(FILE_NAMES)}")
    if format == "onnx":  # the default format, but not the default install: say so before any work
        require_all(ONNX_MODULES, "onnx", "ONNX export (export's default format)",
                    otherwise="or export with --format torchscript, which needs nothing more")
    if opset is not None and format in ("onnx", "openvino"):
        export_files.check_opset(opset)
    deploy = _check_deploy(format, with_preprocessing, layout, quantize, max_accuracy_drop, calibration_images)
    loaded = model if isinstance(model, LoadedModel) else load(model, device="cpu", trust_code=trust_code,
                                                               model_spec=model_spec)
    if quantize is not None and loaded.meta.get("task", "classification") != "classification":
        raise ConfigError(f"--quantize checks the export by its classification accuracy; this is a "
                          f"{loaded.meta.get('task')} model — export it without --quantize")
    name = _file_name(format, quantize)
    path = Path(out) if out is not None else _default_path(loaded, format).with_name(name)
    if path.is_dir() or export_format(path) is None:  # a folder, existing or to be made
        path = path / name
    elif export_format(path) != format:
        raise ConfigError(f"--out {path} names a {export_format(path)} file but the format is {format}; name it "
                          f"*{_suffix(format)} or pass a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    export_files.clean_leftovers(path.parent)  # what killed exports into this folder left behind
    meta = export_metadata(loaded, format, deploy)
    if deploy.staged or format == "openvino":
        diff, bound = _write_staged(loaded, format, path, meta, tolerance, opset, deploy, trust_code)
    else:
        diff, bound = _write_verified(loaded, format, path, meta, tolerance, opset)
    export_files.clean_leftovers(path.parent, replaced=path)  # the data file of the export just replaced
    return ExportResult(path, format, diff, bound, meta, meta.get("verification"))


def _write_verified(loaded: LoadedModel, format: str, path: Path, meta: dict[str, Any], tolerance: float,
                    opset: int | None) -> tuple[float, float]:
    """Write the export to a temp beside ``path``, verify that file, rename it onto ``path``: until the rename the
    previous export stays as it was, and on any failure the temp (and its data file) is deleted."""
    tmp = temp_beside(path)
    written: list[Path] = []
    try:
        with _quiet():
            try:
                written = _WRITERS[format](_plain_copy(loaded), _samples(loaded, _TRACE_BATCH, seed=0), tmp,
                                           json.dumps(meta), opset)
            except VisiontrainError:
                raise
            except Exception as exc:  # exporters raise many kinds; the model's code is what needs changing
                raise ExportError(f"exporting {loaded.meta['model']['name']} to {format} failed: "
                                  f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from None
        fault_point("export-written", format)
        diff, scale = verify(loaded, tmp, format=format)  # the temp, as predict would load it
        bound = tolerance * max(1.0, scale)  # float error grows with the logits' size: deep nets reach 100s
        if not diff <= bound:
            raise ExportError(f"the {format} export differs from the PyTorch model by {diff:.3g} (> {bound:.3g} = "
                              f"tolerance {tolerance:g} x max(1, largest |logit| {scale:.3g})); it was not kept "
                              "(a previous export is untouched) — try another --format or raise --tolerance")
        commit(tmp, path)
    except BaseException:
        for leftover in (tmp, *written):
            leftover.unlink(missing_ok=True)
        raise
    return diff, bound


def export_metadata(loaded: LoadedModel, format: str, deploy: Deploy | None = None) -> dict[str, Any]:
    """What an export carries: enough to preprocess, name the classes and describe the model; and whatever else
    the checkpoint's sidecar states about using the model (decision thresholds, …), under the same names."""
    deploy = deploy or Deploy()
    prep = loaded.prep
    meta = {
        "format": EXPORT_FORMAT, "format_version": 1, "export_format": format,
        "classes": loaded.classes, "preprocessing": prep.to_dict(),
        "model": loaded.meta.get("model"), "task": loaded.meta.get("task", "classification"),
        "metrics": loaded.meta.get("metrics") or {}, "checkpoint": str(loaded.path),
        **({"thresholds": loaded.meta["thresholds"]} if "thresholds" in loaded.meta else {}),
        "input": {"name": "image", "dtype": "float32", "shape": ["batch", prep.channels, prep.size, prep.size],
                  "values": "(pixel / 255 - mean) / std per channel, after the eval transforms"},
        "output": {"name": "logits", "shape": ["batch", len(loaded.classes)]},
        "torch_version": torch.__version__, "precision": deploy.quantize or "fp32",
    }
    if deploy.with_preprocessing:
        meta["input"] = {"name": "image", "dtype": "uint8", "layout": deploy.layout,
                         "shape": pixel_shape(prep, deploy.layout),
                         "values": "pixels 0-255 of the image at the saved size (resized/cropped as the eval "
                                   "transforms say); normalization and channel order are in the graph"}
        meta["output"] = {"name": "logits", "values": _OUTPUT_VALUES.get(meta["task"], "class probabilities"),
                          "shape": ["batch", len(loaded.classes)]}
    for key, value in loaded.meta.items():  # carried generically: a key a later version adds travels too
        if key not in meta and key not in _CHECKPOINT_ONLY:
            meta[key] = value
    return meta


# sidecar entries that describe the checkpoint file or its training, not how to use the model
_CHECKPOINT_ONLY = frozenset({"format", "format_version", "config", "weights", "versions", "created", "epoch",
                              "step", "monitor", "preprocessing", "classes"})
_OUTPUT_VALUES = {"classification": "class probabilities (softmax)",
                  "multilabel": "per-label probabilities (sigmoid); a label is on above its threshold",
                  "regression": "the predicted value"}


@torch.no_grad()
def verify(loaded: LoadedModel, path: str | Path, *, format: str | None = None) -> tuple[float, float]:
    """Largest |logit difference| between the export (loaded as predict loads it) and PyTorch, and the
    largest |logit| PyTorch gave (the scale the difference is judged against). ``format`` names the format of a
    file whose name does not (a temp); the file is trusted: it is one this process just wrote."""
    exported = load_exported(path, device="cpu", trust_code=True, format=format)
    # with the preprocessing in the graph the file returns probabilities: compared as probabilities
    outputs = output_function(str(exported.meta.get("task"))) if has_preprocessing(exported.meta) else (lambda y: y)
    worst = scale = 0.0
    for i, batch in enumerate(_VERIFY_BATCHES):
        x = _samples(loaded, batch, seed=i + 1)
        expected = outputs(loaded.model(x.to(loaded.device)).float().cpu())
        got = outputs(exported.forward(x).float().cpu())
        if got.shape != expected.shape:
            raise ExportError(f"{path}: batch of {batch} gave logits of shape {tuple(got.shape)}, expected "
                              f"{tuple(expected.shape)}; the batch size is not dynamic in this export")
        worst = max(worst, float((got - expected).abs().max()))
        scale = max(scale, float(expected.abs().max()))
    return worst, scale


def _samples(loaded: LoadedModel, batch: int, seed: int) -> torch.Tensor:
    """Normalized inputs from random uint8 images: the value range real images produce."""
    prep = loaded.prep
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, prep.channels, prep.size, prep.size), generator=gen, dtype=torch.uint8)
    return prep.normalizer()(images)


def _plain_copy(loaded: LoadedModel) -> nn.Module:
    # Exporters trace on the CPU with ordinary (contiguous) weights; the loaded model keeps its own format.
    import copy

    model = copy.deepcopy(loaded.model).cpu().to(memory_format=torch.contiguous_format)
    return model.eval()


def _write_staged(loaded: LoadedModel, format: str, path: Path, meta: dict[str, Any], tolerance: float,
                  opset: int | None, deploy: Deploy, trust_code: bool) -> tuple[float, float]:
    """An export made in steps, in a temp folder beside ``path``: the fp32 ONNX graph (with the preprocessing when
    asked), verified against PyTorch; then quantized and/or converted to OpenVINO, and that file checked by its
    agreement and accuracy (reduced precision) or its logits (fp32 OpenVINO); then renamed into place."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-") as folder:
        stage = Path(folder)
        fp32 = stage / "model.onnx"
        net = _plain_copy(loaded)
        layout = deploy.layout if deploy.with_preprocessing else None
        if deploy.with_preprocessing:
            net = WithPreprocessing(net, loaded.prep, deploy.layout, str(meta["task"])).eval()
        sample = _samples(loaded, _TRACE_BATCH, seed=0)
        if layout:
            sample = to_pixels(sample, loaded.prep, layout)
        with _quiet():
            try:
                _write_onnx(net, sample, fp32, json.dumps({**meta, "precision": "fp32", "export_format": "onnx"}),
                            opset)
            except VisiontrainError:
                raise
            except Exception as exc:  # exporters raise many kinds; the model's code is what needs changing
                raise ExportError(f"exporting {loaded.meta['model']['name']} to ONNX failed: "
                                  f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from None
        diff, bound = _check_logits(loaded, fp32, "onnx", tolerance)
        made, made_format = fp32, "onnx"
        if deploy.quantize == "int8":
            made = stage / "model.int8.onnx"
            batches = calibration_batches(loaded, deploy.calibration_images, layout=layout, trust_code=trust_code)
            with _quiet():
                quantize_int8(fp32, made, batches, stage)
        elif deploy.quantize == "fp16":
            made = stage / "model.fp16.onnx"
            with _quiet():
                convert_fp16(fp32, made)
        if format == "openvino":
            xml = stage / "model.openvino.xml"
            with _quiet():
                convert_onnx(made, xml, json.dumps(meta))
            made, made_format = xml, "openvino"
        if deploy.quantize is None and made_format != "onnx":
            diff, bound = _check_logits(loaded, made, made_format, tolerance)
        elif deploy.quantize is not None:
            exported = load_exported(made, device="cpu", trust_code=True, format=made_format)
            check = accuracy_check(loaded, exported.forward, trust_code=trust_code)
            check.update(max_accuracy_drop=deploy.max_accuracy_drop, calibration_images=deploy.calibration_images,
                         fp32_max_abs_diff=diff)
            meta["verification"] = check
            if check["accuracy_drop"] > deploy.max_accuracy_drop:
                raise ExportError(f"the {deploy.quantize} {format} export loses {check['accuracy_drop']:.2f} points "
                                  f"of accuracy on the {check['split']} split ({check['accuracy_fp32']:.2f}% → "
                                  f"{check['accuracy']:.2f}%, top-1 agreement {check['top1_agreement']:.2f}%), more "
                                  f"than --max-accuracy-drop {deploy.max_accuracy_drop:g}; it was not kept — raise "
                                  "the bound, or ship the fp32 export")
        stamped = json.dumps(meta)
        if made_format == "openvino":
            set_ir_metadata(made, stamped)
            # the weights first: until the .xml is renamed in, the old .xml stays whole (it may then read new
            # weights of the same graph for a moment: one export at a time into a folder is the supported way)
            commit(weights_file(made), weights_file(path))
        else:
            set_onnx_metadata(made, META_KEY, stamped)
        commit(made, path)
    return diff, bound


def _check_logits(loaded: LoadedModel, path: Path, format: str, tolerance: float) -> tuple[float, float]:
    diff, scale = verify(loaded, path, format=format)
    bound = tolerance * max(1.0, scale)
    if not diff <= bound:
        raise ExportError(f"the {format} export differs from the PyTorch model by {diff:.3g} (> {bound:.3g} = "
                          f"tolerance {tolerance:g} x max(1, largest |output| {scale:.3g})); it was not kept "
                          "(a previous export is untouched) — try another --format or raise --tolerance")
    return diff, bound


def _file_name(format: str, quantize: str | None) -> str:
    name = FILE_NAMES[format]
    return name if quantize is None else name.replace("model.", f"model.{quantize}.", 1)


def _suffix(format: str) -> str:
    return next(suffix for suffix, fmt in SUFFIXES.items() if fmt == format)


def _default_path(loaded: LoadedModel, format: str) -> Path:
    run = loaded.path.parent.parent if loaded.path.parent.name == "checkpoints" else loaded.path.parent
    return run / "exports" / FILE_NAMES[format]


def _write_onnx(model: nn.Module, sample: torch.Tensor, tmp: Path, meta: str, opset: int | None) -> list[Path]:
    require("onnxscript", "onnx")  # the exporter needs it; say so in one line rather than deep in torch
    require("onnx", "onnx")
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(model, (sample,), input_names=["image"], output_names=["logits"],
                                dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False)
    export_files.check_written_opset(program.model, opset)
    program.model.metadata_props[META_KEY] = meta
    return export_files.save_onnx(program.model, tmp)


def _write_torchscript(model: nn.Module, sample: torch.Tensor, tmp: Path, meta: str, opset: int | None) -> list[Path]:
    traced = torch.jit.trace(model, sample)
    torch.jit.save(traced, str(tmp), _extra_files={META_KEY: meta})
    return []


def _write_pt2(model: nn.Module, sample: torch.Tensor, tmp: Path, meta: str, opset: int | None) -> list[Path]:
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (sample,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2 or a buffer; the temp's name does not
    torch.export.save(program, buffer, extra_files={META_KEY: meta})
    tmp.write_bytes(buffer.getvalue())
    return []


_WRITERS: dict[str, Callable[[nn.Module, torch.Tensor, Path, str, int | None], list[Path]]] = {
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
    "pt2": _write_pt2,
}


_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript")


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and deprecation notes, and log tracebacks of what they fall back from (a
    failed opset conversion); the command prints its own summary, and an error is one line."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
