"""Library versions recorded with every run and checkpoint."""

from __future__ import annotations

import platform
from importlib import metadata


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("visiontrain", "torch", "torchvision", "safetensors", "numpy", "pillow", "tensorboard"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out
