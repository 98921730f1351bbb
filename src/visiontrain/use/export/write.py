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
from visiontrain.use.export.runtime import EXPORT_FORMAT, META_KEY, SUFFIXES, export_format, load_exported
from visiontrain.use.loading import LoadedModel, load

# torch.onnx writes only with onnx and onnxscript installed (its legacy TorchScript exporter too, in torch 2.14);
# onnxruntime verifies the file. All three are the onnx extra (pyproject.toml).
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "pt2": "model.pt2"}
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


def export(model: LoadedModel | str | Path, format: str = "onnx", out: str | Path | None = None, *,
           tolerance: float = 1e-3, opset: int | None = None, trust_code: bool = False,
           model_spec: str | None = None) -> ExportResult:
    """Export a checkpoint (run folder or sidecar) and verify it; returns where and how close it is.

    ``out`` (a file, or a folder) defaults to ``<run>/exports/model.<ext>``. Raises :class:`ExportError` (and
    keeps the previous export, if any) when the export's logits differ from PyTorch's by more than
    ``tolerance x max(1, largest |logit|)`` (``ExportResult.tolerance`` is that bound). ``opset`` (ONNX) must be
    one the installed exporter writes (:func:`~visiontrain.use.export.files.onnx_opsets`). ``model_spec`` or
    ``trust_code`` let a checkpoint of your own model class load (see :func:`visiontrain.load`).
    """
    if format not in _WRITERS:
        raise ConfigError(f"unknown export format {format!r}; choose one of: {', '.join(_WRITERS)}")
    if format == "onnx":  # the default format, but not the default install: say so before any work
        require_all(ONNX_MODULES, "onnx", "ONNX export (export's default format)",
                    otherwise="or export with --format torchscript, which needs nothing more")
    if opset is not None and format == "onnx":
        export_files.check_opset(opset)
    loaded = model if isinstance(model, LoadedModel) else load(model, device="cpu", trust_code=trust_code,
                                                               model_spec=model_spec)
    path = Path(out) if out is not None else _default_path(loaded, format)
    if path.is_dir() or export_format(path) is None:  # a folder, existing or to be made
        path = path / FILE_NAMES[format]
    elif export_format(path) != format:
        raise ConfigError(f"--out {path} names a {export_format(path)} file but the format is {format}; name it "
                          f"*{_suffix(format)} or pass a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    export_files.clean_leftovers(path.parent)  # what killed exports into this folder left behind
    meta = export_metadata(loaded, format)
    diff, bound = _write_verified(loaded, format, path, meta, tolerance, opset)
    export_files.clean_leftovers(path.parent, replaced=path)  # the data file of the export just replaced
    return ExportResult(path, format, diff, bound, meta)


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


def export_metadata(loaded: LoadedModel, format: str) -> dict[str, Any]:
    """What an export carries: enough to preprocess, name the classes and describe the model."""
    prep = loaded.prep
    return {
        "format": EXPORT_FORMAT, "format_version": 1, "export_format": format,
        "classes": loaded.classes, "preprocessing": prep.to_dict(),
        "model": loaded.meta.get("model"), "task": loaded.meta.get("task", "classification"),
        "metrics": loaded.meta.get("metrics") or {}, "checkpoint": str(loaded.path),
        **({"thresholds": loaded.meta["thresholds"]} if "thresholds" in loaded.meta else {}),
        "input": {"name": "image", "dtype": "float32", "shape": ["batch", prep.channels, prep.size, prep.size],
                  "values": "(pixel / 255 - mean) / std per channel, after the eval transforms"},
        "output": {"name": "logits", "shape": ["batch", len(loaded.classes)]},
        "torch_version": torch.__version__,
    }


@torch.no_grad()
def verify(loaded: LoadedModel, path: str | Path, *, format: str | None = None) -> tuple[float, float]:
    """Largest |logit difference| between the export (loaded as predict loads it) and PyTorch, and the
    largest |logit| PyTorch gave (the scale the difference is judged against). ``format`` names the format of a
    file whose name does not (a temp); the file is trusted: it is one this process just wrote."""
    exported = load_exported(path, device="cpu", trust_code=True, format=format)
    worst = scale = 0.0
    for i, batch in enumerate(_VERIFY_BATCHES):
        x = _samples(loaded, batch, seed=i + 1)
        expected = loaded.model(x.to(loaded.device)).float().cpu()
        got = exported.forward(x).float().cpu()
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
