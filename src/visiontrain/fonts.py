"""A font for class names that the default one cannot draw: Chinese, Japanese or Korean (猫, 狗).

matplotlib's DejaVu Sans (and Pillow's default font) have no CJK glyphs, so such names come out as empty boxes.
When a picture's text has characters DejaVu Sans lacks, :func:`fallback_font` finds an installed CJK font by
its family name (Noto Sans CJK, Source Han Sans, WenQuanYi, SimHei, Microsoft YaHei, PingFang …) — the pictures
then use it as a fallback for those characters only, on their own text, never through global settings — or,
when none is installed, prints once per process one line saying how to install one.

>>> fallback_font(["circle", "square"]) is None  # plain ASCII: the default font draws it
True
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

# Family names as the fonts declare them, the most complete first; matplotlib knows them by these names.
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR", "Noto Sans SC",
                "Source Han Sans SC", "Source Han Sans CN", "Source Han Sans", "WenQuanYi Zen Hei",
                "WenQuanYi Micro Hei", "Microsoft YaHei", "SimHei", "PingFang SC", "Hiragino Sans GB", "Heiti SC",
                "Droid Sans Fallback", "Arial Unicode MS")
# Their files' names (lower case), for fonts installed after matplotlib cached its font list.
_CJK_FILES = ("notosanscjk", "notosanssc", "sourcehansans", "wqy-zenhei", "wqy-microhei", "msyh", "simhei",
              "pingfang", "hiragino sans gb", "droidsansfallback", "arial unicode")
INSTALL_HINT = ("warning: class names with characters the installed fonts cannot draw ({chars}) show as boxes in "
                "the pictures; install a CJK font: `apt install fonts-noto-cjk` (Debian, Ubuntu), `dnf install "
                "google-noto-sans-cjk-fonts` (Fedora) or `brew install --cask font-noto-sans-cjk` (macOS)")


class Font(NamedTuple):
    family: str
    path: Path


def fallback_font(texts: Iterable[str]) -> Font | None:
    """A font that draws what the default font cannot in ``texts``, or None when none is needed or installed.

    None with characters missing prints :data:`INSTALL_HINT`, once per process.
    """
    missing = sorted({c for text in texts for c in text if not c.isspace()} - _default_charset())
    if not missing:
        return None
    font = _cjk_font()
    if font is None:
        _hint("".join(missing[:5]) + ("…" if len(missing) > 5 else ""))
    return font


@functools.cache
def _default_charset() -> frozenset[str]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family=["sans-serif"]), fallback_to_default=True)
    return frozenset(chr(code) for code in FT2Font(path).get_charmap())


@functools.cache
def _cjk_font() -> Font | None:
    from matplotlib import font_manager

    manager = font_manager.fontManager
    found = _known(manager.ttflist)
    if found is None:  # installed after matplotlib cached its list of fonts: find the file and add it
        for path in font_manager.findSystemFonts():
            if any(name in Path(path).name.lower() for name in _CJK_FILES):
                try:
                    manager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue  # a file FreeType cannot read: the next
        found = _known(manager.ttflist)
    return found


def _known(entries: Iterable[object]) -> Font | None:
    by_name = {getattr(e, "name", ""): Path(getattr(e, "fname", "")) for e in entries}
    return next((Font(name, by_name[name]) for name in CJK_FAMILIES if name in by_name), None)


_HINTED: list[str] = []  # the characters the one hint of this process named


def _hint(chars: str) -> None:
    if not _HINTED:
        _HINTED.append(chars)
        print(INSTALL_HINT.format(chars=chars), file=sys.stderr, flush=True)


def hinted() -> bool:
    """Whether the install hint was printed in this process (missing-glyph warnings then say nothing new)."""
    return bool(_HINTED)
