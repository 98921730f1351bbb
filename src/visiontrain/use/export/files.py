"""An export's files on disk: the ONNX opset it may ask for, ONNX external data, and what a killed export leaves.

``export`` writes each export to a temp file beside its target (``.model.onnx.<pid>-<random>.tmp``), verifies
that file and renames it onto the target, so the target is always the old export or the whole new one.

ONNX keeps a model's weights in the .onnx itself up to 1.5 GB (torch's own threshold: an .onnx protobuf cannot
pass 2 GB); above that, in a data file the .onnx names. That name is unique per export,
``model.onnx.<pid>-<random>.data``, and the data is written before the .onnx is renamed in: the .onnx on disk
always names the data it was written with. The old export keeps its data until the new .onnx replaces it; then
the old data, named by nothing, is deleted. A kill leaves at most a temp and a data file named by nothing:
:func:`clean_leftovers` deletes them on the next export into that folder (never those of a running export).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from visiontrain.errors import ConfigError
from visiontrain.fileio import pid_alive, remove_dead_temps
from visiontrain.optional import require

INLINE_LIMIT = 1536 * 2**20  # bytes of weights an .onnx holds itself; more go to its data file
_DATA = re.compile(r"^(?P<onnx>.+\.onnx)\.(?P<pid>\d+)-[^.]+\.data$")
_DATA_TEMP_DIR = re.compile(r"^\..+\.onnx\.(?P<pid>\d+)-[^.]+\.data\.[^.]+$")  # onnx_ir writes data in one
# export's own staging folder of a quantized/OpenVINO/preprocessing export: ".model.int8.onnx.<pid>-<random>"
_STAGE_DIR = re.compile(r"^\..+\.(onnx|xml)\.(?P<pid>\d+)-[^.]+$")


def onnx_opsets() -> tuple[int, int]:
    """The ONNX opsets the installed exporter can be asked for: (lowest, highest), from torch.onnx's own
    bounds (torch 2.14: 7 and 23) and no higher than the onnx package knows. torch's exporter writes opset 18
    and up itself and converts to lower ones, which not every model allows (:func:`check_written_opset`)."""
    try:
        from torch.onnx import _constants

        low, high = int(_constants.ONNX_MIN_OPSET), int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError, TypeError, ValueError):  # a torch that moved them: the 2.14 values
        low, high = 7, 23
    with contextlib.suppress(ImportError, AttributeError):
        import onnx

        high = min(high, int(onnx.defs.onnx_opset_version()))
    return low, high


def check_opset(opset: Any) -> int:
    """``opset`` if the installed exporter can write it, else a one-line error saying the range."""
    low, high = onnx_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise ConfigError(f"--opset {opset} is not an ONNX opset the installed exporter writes (torch "
                          f"{torch.__version__}: {low} to {high}); pick one in that range or leave --opset out")
    return opset


def check_written_opset(model: Any, opset: int | None) -> None:
    """Refuse an ONNX model (onnx_ir) whose opset is not the one asked for: torch's exporter falls back to its
    own opset, with a logged warning only, when it cannot convert a model to a lower one."""
    written = model.opset_imports.get("")
    if opset is not None and written != opset:
        low, high = onnx_opsets()
        raise ConfigError(f"the ONNX exporter could not write this model at opset {opset} (it wrote opset "
                          f"{written}); pick another --opset in {low} to {high} (18 and up need no conversion)")


def save_onnx(model: Any, tmp: Path) -> list[Path]:
    """Save an onnx_ir model to ``tmp``; returns the data file written beside it (empty when none is needed)."""
    ir = require("onnx_ir", "onnx")
    size = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if size <= INLINE_LIMIT:
        ir.save(model, tmp, format="protobuf")
        return []
    data = tmp.with_name(_data_name(tmp))
    ir.save(model, tmp, format="protobuf", external_data=data.name)
    return [data]


def _data_name(tmp: Path) -> str:
    # ".model.onnx.<pid>-<random>.tmp" → "model.onnx.<pid>-<random>.data": unique, and tells whose it is
    return tmp.name[1:].removesuffix(".tmp") + ".data"


def clean_leftovers(folder: Path, replaced: Path | None = None) -> list[Path]:
    """Delete what exports into ``folder`` no longer need: temps of dead processes, ONNX data files that no .onnx
    names (a replaced export's, a killed export's) and onnx_ir's data temp folders of dead processes; and, for
    an export just ``replaced``, the data file older visiontrains named plainly ``<name>.data``."""
    removed = remove_dead_temps(folder)
    if replaced is not None:
        legacy = replaced.with_name(replaced.name + ".data")
        if legacy.is_file() and not _in_use(replaced, legacy.name, os.getpid()):
            legacy.unlink(missing_ok=True)
            removed.append(legacy)
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        data, temp_dir = _DATA.match(entry.name), _DATA_TEMP_DIR.match(entry.name)
        if data and entry.is_file() and not _in_use(folder / data["onnx"], entry.name, int(data["pid"])):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
        elif (temp_dir := temp_dir or _STAGE_DIR.match(entry.name)) and entry.is_dir() \
                and not pid_alive(int(temp_dir["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _in_use(onnx: Path, data_name: str, pid: int) -> bool:
    if pid != os.getpid() and pid_alive(pid):
        return True  # an export still running: its .onnx is not renamed in yet
    try:
        with open(onnx, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return view.find(data_name.encode()) >= 0  # the .onnx stores its data file's name verbatim
    except FileNotFoundError:
        return False
    except (OSError, ValueError):  # unreadable or empty: keep the data rather than guess
        return True
