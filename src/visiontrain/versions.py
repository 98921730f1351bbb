"""Library versions recorded with every run and checkpoint."""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata

# torch.load(weights_only=True) is what keeps a .pth from running code: CVE-2025-32434 broke it before 2.6,
# CVE-2026-24747 hit the weights-only unpickler before 2.10.
MIN_TORCH = (2, 10)


class TorchTooOld(ImportError):
    """The installed torch is older than visiontrain's safe-loading guarantees allow."""


def check_torch(version: str | None = None) -> None:
    """Raise :class:`TorchTooOld` (one line: found, needed, how to upgrade) for torch < 2.10.

    >>> check_torch("2.14.1+cu130")
    >>> check_torch("2.5.1")
    Traceback (most recent call last):
    ...
    visiontrain.versions.TorchTooOld: visiontrain needs torch >= 2.10 (found 2.5.1): ...
    """
    if version is None:
        version = _torch_version()
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) < MIN_TORCH:
        raise TorchTooOld(f"visiontrain needs torch >= {'.'.join(map(str, MIN_TORCH))} (found {version}): older "
                          "versions can run code from a checkpoint even with weights_only=True (CVE-2025-32434, "
                          "CVE-2026-24747); upgrade with: pip install --upgrade 'torch>=2.10' 'torchvision>=0.25'")


def _torch_version() -> str:
    """The torch in use: the imported one's version when it is loaded, else the installed distribution's (read
    without importing torch, which takes seconds: `visiontrain --help` must not wait for it)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:  # a torch built from source without its metadata: ask torch itself
        import torch

        return str(torch.__version__)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("visiontrain", "torch", "torchvision", "safetensors", "numpy", "pillow", "tensorboard"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


check_torch()  # at import (the package imports this module first): nothing may run with an unsafe torch
