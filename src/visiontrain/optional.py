"""Optional dependencies (the extras of ``pip install 'visiontrain[…]'``), imported only when a command needs
them; a missing one is one line saying what to install.

>>> require("json", "none").dumps([1])
'[1]'
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from types import ModuleType

from visiontrain.errors import VisiontrainError


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VisiontrainError(f"{module} is not installed; install it with: pip install 'visiontrain[{extra}]'") \
            from None


def require_all(modules: Sequence[str], extra: str, what: str, otherwise: str = "") -> None:
    """Before any work: one line saying that ``what`` needs the extra, when any of its ``modules`` is missing.

    >>> require_all(["json", "no_such_module_here"], "demo", "the demo")
    Traceback (most recent call last):
    ...
    visiontrain.errors.VisiontrainError: the demo needs the demo extra, which the default install leaves out \
(no_such_module_here is missing): pip install 'visiontrain[demo]'
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise VisiontrainError(f"{what} needs the {extra} extra, which the default install leaves out ("
                               f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing): pip install "
                               f"'visiontrain[{extra}]'" + (f"; {otherwise}" if otherwise else ""))
