"""One small registry used for datasets, models, optimizers and schedules.

A duplicate name is an error (two things silently sharing a name is how wrong models get trained), and
lookups of unknown names say what exists, so every `--model x` typo gets a useful answer.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from visiontrain.errors import VisiontrainError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to objects, e.g. ``MODELS.get("lenet5")``.

    >>> r = Registry[int]("number")
    >>> r.register("one", 1)
    1
    >>> r.get("one"), r.list("o*")
    (1, ['one'])
    """

    def __init__(self, kind: str, error: type[VisiontrainError] = VisiontrainError) -> None:
        self.kind = kind
        self._error = error
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@REG.decorator("name")`` registers the decorated object under ``name``."""
        return lambda item: self.register(name, item)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise self._error(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._items), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return f"unknown {self.kind} {name!r}; {hint}choose one of: {', '.join(sorted(self._items))}"

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
