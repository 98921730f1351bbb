"""The schema a config field declares once: type and default (the dataclass field), and beside them its flag,
help, allowed values and range (:func:`knob`). The command line's flags, the flat YAML names, the range and
choice checks and the knob table in docs/training.md are all made from these declarations.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo:
...     epochs: int = knob(2, "passes over the training set", low=1)
>>> spec = knob_of(Demo, "epochs")
>>> spec.check(0, "train.epochs")
'train.epochs must be at least 1'
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from visiontrain.errors import ConfigError

_MISSING: Any = dataclasses.MISSING


@dataclass(frozen=True)
class Knob:
    """What a config field says about itself besides its type and default."""

    help: str
    flag: str | None = None  # the command-line flag; None = --<field name with dashes>
    flat: tuple[str, ...] = ()  # more flat YAML names (the flag's name with underscores always works)
    low: float | None = None  # smallest allowed value (numbers; for lists: every item)
    high: float | None = None  # largest allowed value
    low_open: bool = False  # the bound itself is not allowed: (low, …
    high_open: bool = False
    pattern: str | None = None  # a full-match regex for strings, with ``pattern_help`` in the message
    pattern_help: str = ""
    hparam: bool = False  # logged with the run's final metrics in TensorBoard's HParams tab
    metavar: str | None = None
    # Flags that set one entry of a mapping field: (flag, entry, help), e.g. --augment → transforms.train.
    shortcuts: tuple[tuple[str, str, str], ...] = ()
    # What Ultralytics, timm's train.py, fastai or Lightning call this key (``imgsz``, ``-b``): typed here as a flag
    # or as ``name=value``, the command line answers with this key's flag in one line (never accepted silently).
    peers: tuple[str, ...] = ()
    # The value of the flag given alone (``--pretrained`` = ``--pretrained DEFAULT``); None: the flag needs a value.
    const: str | None = None

    def check(self, value: Any, key: str) -> str | None:
        """The problem with ``value`` for this knob's range or pattern, or None when it is fine."""
        values = value if isinstance(value, list) else [value]
        key = f"{key} values" if isinstance(value, list) else key
        for v in values:
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                return f"{key} must be a finite number, got {v}"
            if isinstance(v, int | float) and not self._in_range(v):
                return f"{key} must be {self.range_text(v)}"
            if isinstance(v, str) and self.pattern and not re.fullmatch(self.pattern, v):
                return f"{key} {v!r} is not valid; {self.pattern_help}"
        return None

    def _in_range(self, v: float) -> bool:
        return not (self._below(v) or self._above(v))

    def _below(self, v: float) -> bool:
        return self.low is not None and (v < self.low or (self.low_open and v == self.low))

    def _above(self, v: float) -> bool:
        return self.high is not None and (v > self.high or (self.high_open and v == self.high))

    def range_text(self, value: float | None = None) -> str:
        """``at least 1``, ``positive``, ``in [0, 1)`` (a fraction's range), ``1 to 1,000,000`` (a count's)."""
        low, high = _num(self.low), _num(self.high)
        if self.low is not None and self.high is not None:
            if self.high <= 1 or self.low_open or self.high_open:
                return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
            return f"{low} to {high}"
        if self.low is not None:
            if self.low == 0:
                return "positive" if self.low_open else "0 or more"
            return f"above {low}" if self.low_open else f"at least {low}"
        if self.high is not None:
            return f"below {high}" if self.high_open else f"at most {high}"
        return "a finite number"


def _num(x: float | None) -> str:
    """A bound as people read it: ``8192``, ``65,536``, ``0.5``."""
    if x is None:
        return ""
    if isinstance(x, int) or (x.is_integer() and abs(x) < 1e15):
        return f"{int(x):,}" if abs(x) >= 10_000 else str(int(x))
    return f"{x:g}"


def knob(default: Any = _MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
         **spec: Any) -> Any:
    """A dataclass field with its :class:`Knob`: ``epochs: int = knob(2, "passes", low=1)``."""
    meta = {"knob": Knob(help, **spec)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def knob_of(cls: type, name: str) -> Knob:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.metadata.get("knob") or Knob("")


@dataclass(frozen=True)
class Leaf:
    """One settable config key, found by walking the sections: ``train.epochs`` and all it declares."""

    key: str  # dotted: "train.epochs"
    name: str  # the field's own name: "epochs"
    hint: Any  # its type
    default: Any
    knob: Knob

    @property
    def flag(self) -> str:
        return self.knob.flag or "--" + self.name.replace("_", "-")

    @property
    def flat_names(self) -> tuple[str, ...]:
        """Names that mean this key at the top of a YAML file: the flag's, then any extra ones."""
        return (self.flag.removeprefix("--").replace("-", "_"), *self.knob.flat)

    @property
    def choices(self) -> tuple[str, ...] | None:
        return literal_choices(self.hint)

    @property
    def kind(self) -> str:
        """How a flag takes the value: bool, int, float, str, list[int|float|str], or mapping."""
        options = [o for o in _options(self.hint) if o is not type(None)]
        first = options[0] if len(options) == 1 else None
        origin = typing.get_origin(first) or first
        if origin is dict:
            return "mapping"
        if origin is list:
            (item,) = typing.get_args(first) or (str,)
            return f"list[{getattr(item, '__name__', 'str')}]"
        if first in (bool, int, float, str):
            return first.__name__
        return "str" if first is not None else "yaml"  # a Literal is text; a union (str | list[float]) is YAML


def leaves(cls: type, prefix: str = "") -> Iterator[Leaf]:
    """Every settable key of a config dataclass, sections first-to-last, fields in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=False)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from leaves(hint, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[misc]
        yield Leaf(prefix + f.name, f.name, hint, default, f.metadata.get("knob") or Knob(""))


def literal_choices(hint: Any) -> tuple[str, ...] | None:
    for option in _options(hint):
        if typing.get_origin(option) is Literal:
            return tuple(str(a) for a in typing.get_args(option))
    return None


def _options(hint: Any) -> tuple[Any, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


MAX_INT = 2**62
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """Check a leaf value against its type; accept ints for floats, strings for numbers from flags, and a
    number for a Literal of strings that spells it (``precision: 32``)."""
    options = _options(hint)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is Literal:
            allowed = typing.get_args(option)
            text = value if isinstance(value, str) else (str(value) if _plain_number(value) else None)
            if text in allowed:
                return text
            if isinstance(value, str) and not any(o is str for o in options):
                close = difflib.get_close_matches(value, [str(a) for a in allowed], n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"{where}: {key} {value!r} is not one of: {', '.join(map(str, allowed))}{hint}")
            continue
        if origin is dict and isinstance(value, dict):
            return dict(value)
        if origin is list and isinstance(value, list | tuple):
            (item_type,) = typing.get_args(option) or (typing.Any,)
            if item_type is typing.Any:
                return list(value)
            return [coerce(v, item_type, f"{key}[{i}]", where) for i, v in enumerate(value)]
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_INT:  # no setting needs more; torch and the OS overflow on such numbers
                raise ConfigError(f"{where}: {key} is out of range, got {value!r}")
            return value
        if origin is float and (_plain_number(value) or (isinstance(value, str)
                                                         and _FLOAT_TEXT.fullmatch(value.strip()))):
            # (YAML 1.1 reads `1e-3`, without a dot, as a string; it is a float to everyone else)
            try:
                return float(value)
            except OverflowError:  # 10**400: a number, but no float; the range check says "finite"
                return math.inf
        if origin is str and isinstance(value, str):
            return value
    wanted = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"{where}: {key} must be {wanted}, got {value!r}")


def _plain_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _type_name(option: Any) -> str:
    if option is type(None):
        return "null"
    if typing.get_origin(option) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(option)))
    return getattr(option, "__name__", str(option))
