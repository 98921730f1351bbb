"""Smaller, faster exports (``export --quantize int8|fp16``) and the check that they still classify as well.

int8 is *static* quantization through onnxruntime's tooling (``onnxruntime.quantization.quantize_static``),
calibrated on a seeded sample of the run's training images. Why onnxruntime's and not PyTorch's PT2E flow: it works
on the very ONNX file visiontrain already writes and verifies, so the graph the user ships is the graph that was
checked; its QDQ output runs in onnxruntime on any CPU and OpenVINO reads it as an int8 model (``--format openvino
--quantize int8``) — PT2E's x86 quantizer targets ``torch.compile`` inside a Python process, and its output still has
to pass through the ONNX exporter, which quantized graphs do not always survive.

fp16 halves the file and suits GPUs (onnxruntime's CUDA provider, TensorRT); inputs and outputs stay float32 so a
client feeds the same arrays (``keep_io_types``). CPUs gain nothing from it.

A reduced-precision export cannot match PyTorch's logits to 1e-3, so it is judged as a user would judge it
(:func:`accuracy_check`): top-1 agreement with the fp32 model and the accuracy of both on the run's held-out split
(test, else val); an export that loses more than ``max_drop`` points is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visiontrain.data import build_data
from visiontrain.data.loaders import FileLoader, TensorLoader
from visiontrain.errors import DataError
from visiontrain.optional import require
from visiontrain.use.evaluate import evaluate, saved_data_config
from visiontrain.use.export.graph import to_pixels
from visiontrain.use.loading import LoadedModel

PRECISIONS = ("int8", "fp16")
CALIBRATION_IMAGES = 300  # "a few hundred" images: ranges settle well before that on the nets measured
CALIBRATION_BATCH = 32


def calibration_batches(loaded: LoadedModel, count: int = CALIBRATION_IMAGES, seed: int = 0, *,
                        layout: str | None = None, trust_code: bool = False) -> list[np.ndarray]:
    """``count`` training images (a seeded random sample, eval transforms) as the export's input arrays: uint8
    pixels in ``layout`` when the graph holds the preprocessing, else the normalized float batch."""
    cfg = saved_data_config(loaded, trust_code=trust_code)
    bundle = build_data(cfg, seed, prep=loaded.prep, splits=("train",))
    if "train" not in bundle.loaders:
        raise DataError(f"dataset {cfg.name!r} has no train split to calibrate the int8 export on")
    normalize = loaded.prep.normalizer()
    out, seen = [], 0
    for images, _labels in _shuffled(bundle.loaders["train"], seed):
        images = images[: count - seen].cpu()
        x = normalize(images)
        out.append((to_pixels(x, loaded.prep, layout) if layout else x).numpy())
        seen += len(images)
        if seen >= count:
            break
    return out


def _shuffled(loader: Any, seed: int) -> Iterator[Any]:
    # the loaders of a checkpoint's data come unshuffled (evaluation order: a folder's first class first); the
    # calibration sample must span the classes, so the same data is read through a seeded shuffled loader
    if isinstance(loader, TensorLoader):
        return iter(TensorLoader(loader.split, CALIBRATION_BATCH, shuffle=True, seed=seed, channels=loader.channels,
                                 transform=loader.transform))
    if isinstance(loader, FileLoader):
        return iter(FileLoader(loader.dataset, CALIBRATION_BATCH, shuffle=True, seed=seed, workers=0,
                               bad_log=loader.bad_log))
    return iter(loader)


def quantize_int8(source: Path, target: Path, batches: list[np.ndarray], work: Path) -> None:
    """Static int8 (QDQ, per-channel weights) of the ONNX ``source`` into ``target``, calibrated on ``batches``."""
    quantization = require("onnxruntime.quantization", "onnx")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "prepared.onnx"
    # folds BatchNorm into the convolutions and infers shapes: what quantize_static's docs ask for first
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.items, None)
            return None if batch is None else {"image": batch}

    # reduce_range: 7-bit weights. CPUs without VNNI (AVX2) multiply u8 x s8 with an instruction that saturates
    # at 16 bits; 7-bit weights cannot overflow it (onnxruntime's quantization guide).
    quantization.quantize_static(str(prepared), str(target), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True, reduce_range=True,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8,
                                 calibrate_method=quantization.CalibrationMethod.MinMax,
                                 extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def convert_fp16(source: Path, target: Path) -> None:
    """Float16 weights and arithmetic; float32 inputs and outputs (the same client code feeds it)."""
    onnx = require("onnx", "onnx")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


def set_onnx_metadata(path: Path, key: str, text: str) -> None:
    """Replace one metadata entry of the ONNX file at ``path`` (the quantizers keep the fp32 file's entries)."""
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=key, value=text)
    onnx.save(model, str(path))


class _Forward(nn.Module):
    """An export's forward (normalized float → logits) as the module evaluate calls."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.run = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def accuracy_check(loaded: LoadedModel, forward: Callable[[torch.Tensor], torch.Tensor], *,
                   trust_code: bool = False) -> dict[str, Any]:
    """Top-1 agreement of ``forward`` (an export) with the checkpoint's model, and both accuracies (in %), on
    the run's held-out split; the drop is fp32's accuracy minus the export's, in points."""
    reference = evaluate(loaded, outputs=True, trust_code=trust_code)
    candidate = evaluate(dataclasses.replace(loaded, model=_Forward(forward)), split=reference["split"],
                         outputs=True, trust_code=trust_code)
    agree = (reference["probabilities"].argmax(1) == candidate["probabilities"].argmax(1)).float().mean()
    fp32, low = 100 * float(reference["accuracy"]), 100 * float(candidate["accuracy"])
    return {"split": reference["split"], "images": int(reference["count"]), "top1_agreement": 100 * float(agree),
            "accuracy_fp32": round(fp32, 4), "accuracy": round(low, 4), "accuracy_drop": round(fp32 - low, 4)}
