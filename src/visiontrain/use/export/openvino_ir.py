"""OpenVINO IR exports (``export --format openvino``, the openvino extra): an ``.openvino.xml`` graph and its
``.openvino.bin`` weights, converted from the verified ONNX export (fp32, or the int8 QDQ one: OpenVINO runs those
as int8). The metadata (classes, preprocessing, verification) is in the IR's ``rt_info``.
"""

from __future__ import annotations

from pathlib import Path

from visiontrain.optional import require
from visiontrain.use.export.runtime import OPENVINO_META


def convert_onnx(source: Path, target: Path, meta: str) -> list[Path]:
    """Convert the ONNX file ``source`` to IR at ``target`` (an .xml) with ``meta`` in it; returns both files."""
    ov = require("openvino", "openvino")
    model = ov.convert_model(str(source))
    model.set_rt_info(meta, OPENVINO_META)
    # compress_to_fp16=False: keep the weights the verification ran on (fp16 is the ONNX --quantize fp16 path)
    ov.save_model(model, str(target), compress_to_fp16=False)
    return [target, weights_file(target)]


def set_metadata(path: Path, meta: str) -> None:
    """Rewrite the metadata of the IR at ``path`` in place (after the verification it now reports)."""
    ov = require("openvino", "openvino")
    model = ov.Core().read_model(str(path))
    model.set_rt_info(meta, OPENVINO_META)
    staged = path.with_name("restamped.openvino.xml")
    ov.save_model(model, str(staged), compress_to_fp16=False)
    weights_file(staged).replace(weights_file(path))
    staged.replace(path)


def weights_file(xml: Path) -> Path:
    return xml.with_suffix(".bin")
