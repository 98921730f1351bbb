"""The hook contract between the loop and everything that watches it.

The loop only trains; logging, TensorBoard, checkpoints and progress are callbacks that receive the one
:class:`~visiontrain.engine.state.TrainState`. A callback stops training by raising :class:`StopTraining`.

Callbacks share that state, so the order in which they see an event matters; each says where it belongs by
its ``order``, one of :data:`ORDERS`, and :class:`Callbacks` calls them phase by phase (in the order given
within a phase):

- ``measure``: adds to what the epoch measured (the EMA's ``val_ema/*`` figures);
- ``decide``: judges the measurements (the best checkpoint, ``state.best``);
- ``observe``: shows and records them (console, ``metrics.jsonl``, TensorBoard, pictures, timings);
- ``control``: steers the run (early stopping, Ctrl-C, gradual unfreezing) — a user's callback by default;
- ``persist``: writes files that outlast the run; the resume point is written last of all, so that it holds
  every callback's state after the event.

``on_fit_end`` is always called, also when training failed: then ``state.error`` holds the exception, and a
callback closes what it opened but writes nothing from the broken state.

>>> class Early(Callback):
...     order = "measure"
>>> [type(cb).__name__ for cb in Callbacks([Callback(), Early()]).items]
['Early', 'Callback']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from visiontrain.errors import ConfigError

if TYPE_CHECKING:
    from visiontrain.engine.state import TrainState

EVENTS = ("on_resume", "on_fit_start", "on_epoch_start", "on_batch_end", "on_epoch_end", "on_fit_end")
Order = Literal["measure", "decide", "observe", "control", "persist"]
ORDERS: tuple[Order, ...] = ("measure", "decide", "observe", "control", "persist")


class StopTraining(Exception):
    """Raise from a callback to end training after the current step; ``reason`` is logged."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class Callback:
    """Override the hooks you need; each gets the shared training state. ``order`` says in which phase the
    callback sees each event (see the module docstring)."""

    order: ClassVar[Order] = "control"

    def on_resume(self, state: TrainState) -> None:
        """Called on resume after :meth:`load_state_dict` and before the optimizer state is restored: the
        place to redo structural changes (e.g. optimizer groups added by gradual unfreezing)."""

    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_batch_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_fit_end(self, state: TrainState) -> None:
        """Called once training ends, however it ends — also after an exception (``state.error`` is set then),
        and also when this callback's ``on_fit_start`` never ran."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback must remember across a resume (JSON-able); most remember nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _phase(callback: Callback) -> int:
    order = getattr(callback, "order", "control")
    if order not in ORDERS:
        raise ConfigError(f"callback {type(callback).__name__} has order {order!r}; use one of: {', '.join(ORDERS)}")
    return ORDERS.index(order)


class Callbacks:
    """Calls one event on every callback, phase by phase (stable: the given order within a phase)."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.items = sorted(callbacks, key=_phase)

    def add(self, callback: Callback) -> None:
        """Add ``callback`` after the others of its phase."""
        self.items = sorted([*self.items, callback], key=_phase)

    def fire(self, event: str, state: TrainState) -> None:
        for cb in self.items:
            getattr(cb, event)(state)

    def fire_fit_end(self, state: TrainState) -> None:
        """``on_fit_end`` on every callback, even when one of them fails. After a failed fit (``state.error``)
        a callback's error is added as a note to the fit's own, which propagates; after a good one the first
        callback error is raised once all have run."""
        first: Exception | None = None
        for cb in self.items:
            try:
                cb.on_fit_end(state)
            except Exception as exc:  # the others still close what they opened
                if state.error is not None:
                    state.error.add_note(f"while cleaning up, {type(cb).__name__}.on_fit_end failed too: "
                                         f"{type(exc).__name__}: {exc}")
                elif first is None:
                    first = exc
        if first is not None:
            raise first

    def state_dict(self) -> dict[str, Any]:
        return {type(cb).__name__: s for cb in self.items if (s := cb.state_dict())}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for cb in self.items:
            if type(cb).__name__ in states:
                cb.load_state_dict(states[type(cb).__name__])
