"""Text from outside (file names, class names, flag values) made safe to show or to use as a name.

>>> printable("cat\\x1b[2J\\nname")
'cat\\\\x1b[2J\\\\nname'
>>> slug("data/My Photos (2024)")
'My_Photos_2024'
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

_CONTROL = frozenset({"Cc", "Zl", "Zp", "Cs"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def printable(text: str) -> str:
    """``text`` as one line that is safe on a terminal: control characters (a newline in a file name, an escape
    sequence in a flag value or a class name) are shown escaped, as ``\\x1b``, instead of acting; so are lone
    surrogates (undecodable bytes of a file name), which would stop a print to stdout."""
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _CONTROL else ch
                   for ch in str(text))


def utf8_safe(text: str) -> str:
    """``text`` safe to write as UTF-8 even when a file name holds undecodable bytes (shown as \\xNN)."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def slug(text: str, fallback: str = "run", *, last_part: bool = True) -> str:
    """A file-name-safe part for run folders and output files: letters, digits and ``_.-`` of ``text`` (of its
    last path part with ``last_part``, so ``data/ants`` names a run ``ants``; a class ``T-shirt/top`` wants all)."""
    part = (Path(text).name or text) if last_part else text
    return _UNSAFE.sub("_", part).strip("_") or fallback


def percent(x: float) -> str:
    return f"{100 * x:.2f}%"


_SHOWN = ("accuracy", "top5", "map", "f1", "loss", "mae", "rmse")  # display order; fractions shown as percentages
_FRACTIONS = ("accuracy", "top5", "map", "f1")


def describe(metrics: dict[str, Any], prefix: str = "", sep: str = ", ", short: bool = False) -> str:
    """``accuracy 99.12%, top5 100.00%, loss 0.0273`` (or ``loss …, mae …, rmse …`` for regression)."""
    parts = []
    for name in (("loss", "accuracy", "top5", "map", "mae", "rmse") if short else _SHOWN):
        value = metrics.get(prefix + name)
        if isinstance(value, int | float):
            label = "acc" if short and name == "accuracy" else name
            parts.append(f"{label} {percent(value) if name in _FRACTIONS else f'{value:.4f}'}")
    return sep.join(parts)
