"""Optional dependencies (the extras of ``pip install 'visiontrain[…]'``), imported only when a command needs
them; a missing one is one line saying what to install.

>>> require("json", "none").dumps([1])
'[1]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from visiontrain.errors import VisiontrainError


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VisiontrainError(f"{module} is not installed; install it with: pip install 'visiontrain[{extra}]'") \
            from None
