"""What to say about arguments argparse did not recognise: the flag visiontrain uses instead.

People bring their habits from the peers: ``--imgsz 64`` and ``epochs=3`` (Ultralytics), ``-b 32`` and
``--output`` (timm's train.py), ``--max-epochs`` (Lightning). The config schema declares those names beside each
key (``peers=`` in :mod:`visiontrain.config.sections`); a near miss of one of the command's own flags gets
argparse-style "did you mean". The names are never accepted silently: a run's config has one name per key.

>>> rewrite(["--imgsz", "64", "epochs=3", "-b", "16", "project=my runs"], {"--image-size", "--epochs", "--batch-size",
...                                                                       "--out"})
"--image-size 64 --epochs 3 --batch-size 16 --out 'my runs'"
>>> rewrite(["--colour", "red"], {"--image-size"}) is None
True
"""

from __future__ import annotations

import difflib
import functools
import re
import shlex

from visiontrain.config import keys

_KEY_VALUE = re.compile(r"([A-Za-z][\w.-]*)=(.*)", re.DOTALL)


def _norm(name: str) -> str:
    return name.lstrip("-").replace("-", "_").lower()


@functools.cache
def _peer_flags() -> dict[str, str]:
    """Names → the visiontrain flag: every key's own flag and flat names (``image_size=64``), then its peers'."""
    table: dict[str, str] = {}
    for leaf in keys():
        for name in (leaf.flag, *leaf.flat_names):
            table.setdefault(_norm(name), leaf.flag)
    for leaf in keys():
        for name in leaf.knob.peers:
            table.setdefault(_norm(name), leaf.flag)
    return table


def _flag_for(name: str, flags: set[str]) -> str | None:
    """The command's flag that ``name`` (typed with or without dashes) stands for, if any."""
    own = {_norm(f): f for f in flags if f.startswith("--")}
    if _norm(name) in own:  # --image_size, image-size=64
        return own[_norm(name)]
    flag = _peer_flags().get(_norm(name))
    if flag in flags:
        return flag
    close = difflib.get_close_matches(_norm(name), list(own), n=1, cutoff=0.8) if len(_norm(name)) > 3 else []
    return own[close[0]] if close else None


def rewrite(extras: list[str], flags: set[str]) -> str | None:
    """The unrecognised arguments ``extras`` as visiontrain spells them, or None when none of them is known."""
    out: list[str] = []
    known = False
    for token in extras:
        pair = _KEY_VALUE.fullmatch(token)
        if token.startswith("-"):
            name, eq, value = token.partition("=")
            flag = _flag_for(name, flags)
            out.append(f"{flag}{eq}{value}" if flag else token)
        elif pair:  # Ultralytics' key=value
            flag = _flag_for(pair[1], flags)
            out += [flag, pair[2]] if flag else [token]
        else:
            out.append(token)
            continue
        known = known or flag is not None
    return shlex.join(out) if known else None


def unrecognized_message(extras: list[str], flags: set[str]) -> str:
    """argparse's own message, with the arguments rewritten as visiontrain spells them where that is known."""
    message = f"unrecognized arguments: {' '.join(extras)}"
    better = rewrite(extras, flags)
    return f"{message}; write them as: {better}" if better else message
