"""Partial weight loading with a report (seed 001 §9 of the notes; docs/cookbook.md §11, partial loading and
freezing): by name, after rename rules, or by order and shape.

``load_partial`` never guesses silently: every tensor of the model is either loaded (and from which file
key), missing (kept its fresh initialisation), or shape-mismatched; every tensor of the file that was not
used is unexpected. ``strict`` turns any of those gaps into an error.

Rename rules are ``OLD=NEW``: keys starting with ``OLD`` start with ``NEW`` instead (``module.model.0.=conv1.``);
``re:PATTERN=REPLACEMENT`` is a regular-expression substitution (``re:^model\\.(\\d+)\\.=blocks.\\1.``).
Rules apply in order, after the DDP/compile wrappers are stripped (a literal rule may keep them).
Order matching pairs the model's tensors with the file's in order while the shapes agree — the notes'
MobileNet case (docs/cookbook.md §11), where the names differ but the order holds. BatchNorm's
``num_batches_tracked`` counters are bookkeeping, not weights: they are never reported missing nor paired by order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from visiontrain.checkpoint.weights import WRAPPER_PREFIXES
from visiontrain.errors import ConfigError, ModelError

MATCHES = ("name", "order")
_COUNTER = "num_batches_tracked"


@dataclass
class LoadReport:
    source: str
    match: str
    model_tensors: int  # tensors the model has (counters excluded)
    file_tensors: int  # counters excluded here too
    loaded: list[tuple[str, str]] = field(default_factory=list)  # (model key, file key)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)  # key, file_key, model_shape, file_shape
    renamed: int = 0
    rules: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} of {self.model_tensors} model tensors by {self.match} "
                f"(file has {self.file_tensors}); {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.mismatched)} with another shape")

    def lines(self, limit: int = 4) -> list[str]:
        """Human-readable lines: the summary, then examples of each gap."""
        renamed = f"; {self.renamed} keys renamed" if self.renamed else ""
        out = [f"init from {self.source}: {self.summary()}{renamed}"]
        for label, keys in (("missing (kept their fresh init)", self.missing),
                            ("unexpected (in the file, unused)", self.unexpected)):
            if keys:
                more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
                out.append(f"  {label}: {', '.join(keys[:limit])}{more}")
        for m in self.mismatched[:limit]:
            out.append(f"  shape differs: {m['key']} {tuple(m['model_shape'])} in the model, {m['file_key']} "
                       f"{tuple(m['file_shape'])} in the file")
        if not self.loaded:
            out.append("  nothing matched: try --init-match order (same layers, other names) or --rename OLD=NEW")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary(), "complete": self.complete}


def parse_rules(rules: Iterable[str]) -> list[Callable[[str], str | None]]:
    """``OLD=NEW`` (prefix) or ``re:PATTERN=REPL`` → functions returning the new key, or None if no match."""
    parsed = []
    for rule in rules:
        old, sep, new = rule.partition("=")
        if not sep or not old:
            raise ConfigError(f"--rename {rule!r}: expected OLD=NEW, e.g. 'module.model.0.=conv1.' "
                              "or 're:^model\\.(\\d+)\\.=blocks.\\1.'")
        if old.startswith("re:"):
            try:
                regex = re.compile(old[3:])
            except re.error as exc:
                raise ConfigError(f"--rename {rule!r}: bad regular expression ({exc})") from None
            parsed.append(lambda k, r=regex, n=new: r.sub(n, k, count=1) if r.search(k) else None)
        else:
            for prefix in WRAPPER_PREFIXES:  # the file's keys are unwrapped already
                old = old.removeprefix(prefix)
            parsed.append(lambda k, o=old, n=new: n + k[len(o):] if k.startswith(o) else None)
    return parsed


def rename(tensors: dict[str, torch.Tensor], rules: list[str]) -> tuple[dict[str, torch.Tensor], int]:
    """Apply the rules in order to every key; a rule that matches nothing is an error (a typo)."""
    fns, out, changed = parse_rules(rules), {}, 0
    used = [False] * len(fns)
    for key, value in tensors.items():
        new = key
        for i, fn in enumerate(fns):
            result = fn(new)
            if result is not None:
                new, used[i] = result, True
        changed += new != key
        out[new] = value
    for rule, ok in zip(rules, used, strict=True):
        if not ok:
            sample = ", ".join(list(tensors)[:3])
            raise ConfigError(f"--rename {rule!r} matches no key of the file (keys look like: {sample}); rules "
                              "are prefixes unless written re:PATTERN=REPLACEMENT")
    return out, changed


def load_partial(model: nn.Module, tensors: dict[str, torch.Tensor], *, match: str = "name",
                 rules: Iterable[str] = (), strict: bool = False, source: str = "weights") -> LoadReport:
    """Load what fits of ``tensors`` into ``model`` and report the rest.

    >>> trained = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10))  # keys 0.weight … 2.bias
    >>> class Net(nn.Module):  # the same body under other names, and a 3-class head
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
    >>> load_partial(Net(), trained.state_dict(), match="order").summary()
    'loaded 2 of 4 model tensors by order (file has 4); 1 missing, 1 unexpected, 1 with another shape'
    >>> load_partial(Net(), trained.state_dict(), rules=["0.=body."]).summary()
    'loaded 2 of 4 model tensors by name (file has 4); 2 missing, 2 unexpected, 0 with another shape'
    """
    if match not in MATCHES:
        raise ConfigError(f"unknown init match {match!r}; choose one of: {', '.join(MATCHES)}")
    rules = list(rules)
    tensors, renamed = rename(tensors, rules) if rules else (tensors, 0)
    target = model.state_dict()
    counted = [k for k in target if not k.endswith(_COUNTER)]
    theirs = sum(not k.endswith(_COUNTER) for k in tensors)
    report = LoadReport(source, match, len(counted), theirs, renamed=renamed, rules=rules)
    _MATCHERS[match](target, tensors, report)
    if strict and not report.complete:
        raise ModelError(f"{source} (--strict): {report.summary()}; drop --strict to load what fits and keep "
                         "the rest freshly initialised")
    updated = dict(target)
    counters = [(k, k) for k in target if k.endswith(_COUNTER) and k in tensors and tensors[k].shape == target[k].shape]
    for key, file_key in [*report.loaded, *counters]:
        updated[key] = tensors[file_key].to(dtype=target[key].dtype)
    model.load_state_dict(updated, strict=True)
    return report


def _by_name(target: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], report: LoadReport) -> None:
    for key, value in target.items():
        if key.endswith(_COUNTER):
            continue  # copied by name when the file has them, never a gap
        if key not in tensors:
            report.missing.append(key)
        elif tensors[key].shape != value.shape:
            report.mismatched.append(_mismatch(key, key, value, tensors[key]))
        else:
            report.loaded.append((key, key))
    report.unexpected = [k for k in tensors if k not in target and not k.endswith(_COUNTER)]


def _by_order(target: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], report: LoadReport) -> None:
    mine = [k for k in target if not k.endswith(_COUNTER)]
    theirs = [k for k in tensors if not k.endswith(_COUNTER)]
    n = 0
    for key, file_key in zip(mine, theirs, strict=False):
        if target[key].shape != tensors[file_key].shape:
            # past the first disagreement the order no longer holds: stop rather than load lookalikes
            report.mismatched.append(_mismatch(key, file_key, target[key], tensors[file_key]))
            n += 1
            break
        report.loaded.append((key, file_key))
        n += 1
    report.missing = mine[len(report.loaded):][len(report.mismatched):]
    report.unexpected = theirs[n:]


def _mismatch(key: str, file_key: str, mine: torch.Tensor, theirs: torch.Tensor) -> dict[str, Any]:
    return {"key": key, "file_key": file_key, "model_shape": list(mine.shape), "file_shape": list(theirs.shape)}


_MATCHERS: dict[str, Callable[[dict, dict, LoadReport], None]] = {"name": _by_name, "order": _by_order}
