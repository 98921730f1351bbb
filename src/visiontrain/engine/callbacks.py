"""The hook contract between the loop and everything that watches it.

The loop only trains; logging, TensorBoard, checkpoints and progress are callbacks that receive the one
:class:`~visiontrain.engine.state.TrainState`. A callback stops training by raising :class:`StopTraining`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visiontrain.engine.state import TrainState

EVENTS = ("on_resume", "on_fit_start", "on_epoch_start", "on_batch_end", "on_epoch_end", "on_fit_end")


class StopTraining(Exception):
    """Raise from a callback to end training after the current step; ``reason`` is logged."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class Callback:
    """Override the hooks you need; each gets the shared training state."""

    def on_resume(self, state: TrainState) -> None:
        """Called on resume after :meth:`load_state_dict` and before the optimizer state is restored: the
        place to redo structural changes (e.g. optimizer groups added by gradual unfreezing)."""

    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_batch_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_fit_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What this callback must remember across a resume (JSON-able); most remember nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Callbacks:
    """Calls one event on every callback, in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.items = list(callbacks)

    def fire(self, event: str, state: TrainState) -> None:
        for cb in self.items:
            getattr(cb, event)(state)

    def state_dict(self) -> dict[str, Any]:
        return {type(cb).__name__: s for cb in self.items if (s := cb.state_dict())}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for cb in self.items:
            if type(cb).__name__ in states:
                cb.load_state_dict(states[type(cb).__name__])
