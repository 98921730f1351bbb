"""What a person watching the run sees: a progress bar with ETA on a TTY, tqdm's notebook bar (a widget) in
Jupyter, plain lines otherwise (a log file, a pipe, a notebook without ipywidgets)."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, Literal, TextIO

from tqdm import tqdm

from visiontrain.engine.callbacks import Callback
from visiontrain.engine.state import TrainState
from visiontrain.text import describe


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (JupyterLab, Notebook, VS Code, Colab), as tqdm.auto decides it:
    IPython is loaded and its shell runs under a kernel app — not IPython in a terminal, not a script."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_style(stream: TextIO) -> Literal["notebook", "bar", "lines"]:
    """The notebook's widget bar in Jupyter (when ipywidgets is installed: the ``notebook`` extra), the terminal
    bar on a TTY, and plain lines where a bar would print garbage or nothing (a notebook's stderr is no TTY)."""
    if in_notebook():
        return "notebook" if importlib.util.find_spec("ipywidgets") is not None else "lines"
    return "bar" if stream.isatty() else "lines"


def _bar_class(style: str) -> Any:
    if style == "notebook":
        from tqdm.notebook import tqdm as notebook_tqdm  # ipywidgets: loaded only inside a notebook

        return notebook_tqdm
    return tqdm


class ConsoleLogger(Callback):
    order = "observe"

    def __init__(self, stream: TextIO | None = None, progress: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        style = progress_style(self.stream) if progress is None else "bar" if progress else "lines"
        self.progress = style != "lines"
        self._bar_class = _bar_class(style) if self.progress else tqdm
        self._bar: tqdm | None = None

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def on_epoch_start(self, state: TrainState) -> None:
        if self.progress:
            self._bar = self._bar_class(total=state.steps_per_epoch,
                                        desc=f"epoch {state.epoch + 1}/{state.config.train.epochs}",
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
