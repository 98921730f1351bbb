"""Symlinks in a folder-per-class tree: what is followed, what is skipped, and why.

The data root is the real path of the folder given with ``--data``. Nothing outside it is ever read:

* a **file** symlink is used when it resolves inside the root (anywhere in it) and skipped when it resolves
  outside; one that resolves nowhere (dangling, a loop) is left to the header scan, which names it a bad image;
* a **folder** symlink (a class folder, or a folder inside one) is not followed unless ``data.follow_symlinks``
  (``--follow-symlinks``); then it is followed only when its target lies inside the root, does not contain
  the folder the link is in (a loop), was not walked already for this class, and neither lies in nor contains
  another class's folder (of any split) or a folder another class already reached through a link.
* a symlinked ``train``/``val``/``test`` folder follows the same rules; one that is refused stops the run
  with one line, as the split layout would otherwise change without a word.

Every skipped link is recorded as (link, target, reason): a note in the run's first lines and in
``visiontrain data info``, and ``skipped_links.txt`` in the run folder.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from visiontrain.errors import DataError

NOT_FOLLOWED = "folder symlink, not followed without --follow-symlinks"
OUTSIDE = "leads outside the data root"
OTHER_CLASS = "leads into another class's folder"
LOOP = "leads back into a folder already walked (a loop, or the same folder twice)"

_SHORT = {NOT_FOLLOWED: "folder link(s) not followed (--follow-symlinks follows those inside the data root)",
          OUTSIDE: "leading outside the data root", OTHER_CLASS: "leading into another class's folder",
          LOOP: "leading back into a folder already walked"}


def _under(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies inside it (both real, absolute paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class LinkRules:
    """The walk of one data root: which folders belong to which class, and the links skipped so far."""

    def __init__(self, root: Path, follow: bool) -> None:
        self.root = os.path.realpath(root)
        self.follow = follow
        self.skipped: list[tuple[str, str, str]] = []  # (link, where it points, reason)
        self._owners: dict[str, str] = {}  # real folder → the class folder ("train/cats") it belongs to

    def claim(self, folder: Path, owner: str) -> None:
        """``folder`` (a real class folder) belongs to ``owner``; links of other classes stay out of it."""
        self._owners[os.path.realpath(folder)] = owner

    def folder_link(self, link: Path, owner: str, walked: set[str]) -> bool:
        """Whether to follow the folder symlink ``link`` met while walking ``owner``'s class folder (``walked``:
        the real folders walked for it so far); one not followed is recorded, one followed is ``owner``'s now."""
        target = os.path.realpath(link)
        reason = self._refusal(link, target, owner, walked)
        if reason is not None:
            self.skipped.append((str(link), _pointee(link), reason))
            return False
        self._owners[target] = owner
        return True

    def _refusal(self, link: Path, target: str, owner: str, walked: set[str]) -> str | None:
        if not self.follow:
            return NOT_FOLLOWED
        if not _under(target, self.root):
            return OUTSIDE
        here = os.path.realpath(link.parent)
        if _under(here, target) or target in walked:
            return LOOP
        for folder, other in self._owners.items():
            if other != owner and (_under(target, folder) or _under(folder, target)):
                return OTHER_CLASS
        return None

    def file_link(self, path: Path) -> bool:
        """Whether to use the file symlink ``path``: yes inside the root, no (recorded) outside it."""
        if not os.path.exists(path) or _under(os.path.realpath(path), self.root):
            return True  # inside, or resolving nowhere: the header scan names it (missing, symlink loop)
        self.skipped.append((str(path), _pointee(path), OUTSIDE))
        return False

    def split_folder(self, folder: Path, others: list[Path]) -> None:
        """Check ``root/train`` (val, test) when it is a symlink: the folder rules, with the other split folders
        standing for the other classes. Refused, it is one line: the split layout would change without a word."""
        if not folder.is_symlink():
            return
        target = os.path.realpath(folder)
        reason = self._refusal(folder, target, folder.name, set())
        reals = [os.path.realpath(o) for o in others if o.exists()]
        if reason is None and any(_under(target, r) or _under(r, target) for r in reals):
            reason = "leads into another split's folder"
        if reason is not None:
            raise DataError(f"{folder} is a symlink to {_pointee(folder)}, which {_explain(reason)}; pass the real "
                            "folder with --data (or, for a target inside the data root, add --follow-symlinks)")

    def note(self) -> list[str]:
        """One line for the run's first lines and ``data info``: how many links were skipped, and why."""
        if not self.skipped:
            return []
        counts = Counter(reason for _, _, reason in self.skipped)
        why = ", ".join(f"{n:,} {_SHORT.get(reason, reason)}" for reason, n in counts.most_common())
        link, target, _ = self.skipped[0]
        return [f"skipped {len(self.skipped):,} symlink(s) in the data folder ({why}); first: {link} -> {target}; "
                "all are listed in skipped_links.txt"]


def _pointee(link: Path) -> str:
    try:
        return os.readlink(link)
    except OSError:
        return "?"


def _explain(reason: str | None) -> str:
    return {NOT_FOLLOWED: "visiontrain does not follow without --follow-symlinks"}.get(reason or "", reason or "")
