"""Callbacks that steer training: EMA of weights, early stopping, clean Ctrl-C, fault points."""

from __future__ import annotations

import signal
from typing import Any

from visiontrain.engine.callbacks import Callback, StopTraining
from visiontrain.engine.distributed import any_rank
from visiontrain.engine.metrics import evaluate_batches, headline
from visiontrain.engine.state import TrainState
from visiontrain.faults import fault_point


class EMAUpdate(Callback):
    """Updates ``state.ema`` after every optimizer step and validates it each epoch as ``<split>_ema/*``: a
    measurement, so that the best checkpoint, the logs and early stopping see it."""

    order = "measure"

    def on_batch_end(self, state: TrainState) -> None:
        assert state.ema is not None
        state.ema.update_parameters(state.model)

    def on_epoch_end(self, state: TrainState) -> None:
        if state.ema is None or state.eval_loader is None:
            return
        full = evaluate_batches(state.ema.module, state.eval_loader, state.prepare, state.device, len(state.classes),
                                task=state.task, reduce=state.dist.reducer(), gather=state.dist.gatherer())
        state.epoch_metrics.update({f"{state.eval_split}_ema/{k}": v for k, v in headline(full).items()})


class EarlyStopping(Callback):
    """Stops after ``patience`` epochs without improvement of the monitored metric: it controls, after the saver
    has decided ``state.best`` for the epoch."""

    order = "control"

    def __init__(self, patience: int) -> None:
        self.patience, self.bad_epochs, self.best_epoch = patience, 0, 0

    def on_epoch_end(self, state: TrainState) -> None:
        if state.best is not None and state.best["epoch"] == state.epoch:
            self.bad_epochs, self.best_epoch = 0, state.epoch
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            raise StopTraining(f"early stop: {state.best['monitor'] if state.best else 'metric'} has not "
                               f"improved for {self.bad_epochs} epochs (best at epoch {self.best_epoch})")

    def state_dict(self) -> dict[str, Any]:
        return {"bad_epochs": self.bad_epochs, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_epochs, self.best_epoch = int(state["bad_epochs"]), int(state["best_epoch"])


class GracefulInterrupt(Callback):
    """First Ctrl-C: finish the current step, checkpoint, stop. A second Ctrl-C interrupts at once. The handler
    it installs is put back when the fit ends, however it ends."""

    order = "control"

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def on_fit_start(self, state: TrainState) -> None:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None

    def on_batch_end(self, state: TrainState) -> None:
        fault_point("step")
        # With several processes every rank stops at the same step, whichever got the Ctrl-C.
        if any_rank(self.requested, state.dist, state.device):
            raise StopTraining("interrupted (Ctrl-C)")

    def on_fit_end(self, state: TrainState) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
