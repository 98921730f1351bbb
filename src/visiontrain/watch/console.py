"""What a person watching the terminal sees: a progress bar with ETA on a TTY, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from visiontrain.engine.callbacks import Callback
from visiontrain.engine.state import TrainState
from visiontrain.text import describe


class ConsoleLogger(Callback):
    order = "observe"

    def __init__(self, stream: TextIO | None = None, progress: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.progress = self.stream.isatty() if progress is None else progress
        self._bar: tqdm | None = None

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def on_epoch_start(self, state: TrainState) -> None:
        if self.progress:
            self._bar = tqdm(total=state.steps_per_epoch, desc=f"epoch {state.epoch + 1}/{state.config.train.epochs}",
                             file=self.stream, unit="step", leave=False, dynamic_ncols=True)

    def on_batch_end(self, state: TrainState) -> None:
        log = state.every(state.config.train.log_every)
        if self._bar is not None:
            self._bar.update(1)
            if log:
                self._bar.set_postfix(loss=f"{state.loss_value():.4f}", lr=f"{state.step_lr:.2e}", refresh=False)
        elif log:
            self._print(f"epoch {state.epoch + 1}/{state.config.train.epochs} "
                        f"step {state.batch_in_epoch}/{state.batches_per_epoch} "
                        f"loss {state.loss_value():.4f} lr {state.step_lr:.2e}")

    def on_epoch_end(self, state: TrainState) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        m, split = state.epoch_metrics, state.monitor_split
        line = f"epoch {state.epoch}/{state.config.train.epochs}: train {describe(m, 'train/', ' ', short=True)}"
        if f"{split}/loss" in m and split != "train":
            line += f" | {split} {describe(m, f'{split}/', ' ', short=True)}"
        line += f" | {m['train/epoch_time_s']:.1f} s, {m['train/img_per_s']:,.0f} img/s"
        self._print(line)

    def on_fit_end(self, state: TrainState) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if state.stop_reason:
            self._print(f"stopped: {state.stop_reason}")
