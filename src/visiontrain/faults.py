"""Fault injection for the reliability tests: ``VISIONTRAIN_FAULT=<point>:<n>`` kills the process with
SIGKILL the n-th time it passes ``<point>`` (e.g. ``step:37``, ``before-rename:3``).

A point may carry a detail, targeted as ``<point>/<detail>``: atomic writes pass ``before-rename`` with the
file's name, so ``before-rename/resume.safetensors:2`` kills in the middle of the second write of the resume
file, whatever else was written before it. ``export-written/<format>`` is passed once an export's temp file is
written, before it is verified (its rename is a ``before-rename`` of the export's name, like every other).

Real processes, real kills: this is how the tests prove that a crash at any of these moments loses
nothing and a resume continues exactly. Unset, it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("VISIONTRAIN_FAULT", "")
    point, _, count = spec.partition(":")
    return (point, int(count or 1)) if point else None


def fault_point(point: str, detail: str = "") -> None:
    target = _target()
    if target is None or target[0] not in (point, f"{point}/{detail}"):
        return
    _counts[target[0]] = _counts.get(target[0], 0) + 1
    if _counts[target[0]] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
