"""Checkpoints during training.

After every epoch (and every ``checkpoint_every`` steps, and when training stops early) the resume point
``resume.safetensors`` is written first, then the usable ``last`` checkpoint; ``best`` when the monitored
metric improves; ``ema`` beside them when an EMA is kept; ``epoch-NNNN`` copies for ``keep_last``.

Two callbacks: :class:`BestSaver` (best, keep-last copies) runs where the monitored metric is known, and
:class:`CheckpointSaver` (resume point, last, ema) runs LAST in the chain, so that a resume point holds
every callback's state *after* the event — the best so far, early-stopping counters — not before it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from visiontrain.checkpoint.format import save_checkpoint
from visiontrain.engine.callbacks import Callback, Callbacks
from visiontrain.engine.metrics import HEADLINE, scalar_metrics
from visiontrain.engine.resume import save_resume
from visiontrain.engine.state import TrainState
from visiontrain.faults import fault_point
from visiontrain.models.assembly import model_spec


def checkpoint_meta(state: TrainState) -> dict[str, Any]:
    """What a later command needs to rebuild and use the model without the user restating it."""
    return {
        "task": state.task,
        "model": model_spec(state.config.model, state.prep.channels),  # name, args, head
        "classes": list(state.classes),
        "preprocessing": state.prep.to_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "metrics": scalar_metrics(state.epoch_metrics),
        "monitor": monitor_key(state),
        "config": state.config.to_dict(),
    }


def monitor_key(state: TrainState) -> str:
    key = state.config.train.monitor
    if key != "auto":
        return key
    return f"{state.monitor_split}/{'loss' if state.task == 'regression' else 'accuracy'}"


def monitor_mode(key: str) -> str:
    """Lower is better for losses and errors, higher for everything else."""
    return "min" if key.endswith(("loss", "error", "mae", "rmse")) else "max"


class BestSaver(Callback):
    """``best`` when the monitored metric improves (updating ``state.best``), ``epoch-NNNN`` for keep-last."""

    def __init__(self, folder: Path, write: bool = True) -> None:
        self.folder = folder
        self.write = write  # every process tracks the best (early stopping needs it); one writes the files

    def on_epoch_end(self, state: TrainState) -> None:
        key = monitor_key(state)
        value = state.epoch_metrics.get(key)
        if value is None:  # no validation split: judge by the training figures
            key = "train/loss" if state.task == "regression" else "train/accuracy"
            value = state.epoch_metrics[key]
        better = state.best is None or (value < state.best["value"] if monitor_mode(key) == "min"
                                        else value > state.best["value"])
        if better:
            prefix = key.split("/")[0] + "/"
            state.best = {k.removeprefix(prefix): v for k, v in scalar_metrics(state.epoch_metrics).items()
                          if k.startswith(prefix) and k.removeprefix(prefix) in HEADLINE}
            state.best.update({"epoch": state.epoch, "split": prefix[:-1], "monitor": key, "value": value})
            if self.write:
                save_checkpoint(self.folder / "best", state.model, checkpoint_meta(state))
        if state.config.train.keep_last and self.write:
            self._keep_epoch_copy(state)

    def _keep_epoch_copy(self, state: TrainState) -> None:
        save_checkpoint(self.folder / f"epoch-{state.epoch:04d}", state.model, checkpoint_meta(state))
        for old in sorted(self.folder.glob("epoch-*.json"))[: -state.config.train.keep_last]:
            for suffix in (".json", ".safetensors"):
                with contextlib.suppress(OSError):
                    old.with_suffix(suffix).unlink()


class CheckpointSaver(Callback):
    """The resume point, then ``last`` (and ``ema``): every ``checkpoint_every`` steps, after every epoch and
    when training stops. Put it last in the chain (see the module docstring)."""

    def __init__(self, folder: Path, train_loader: Any, chain: Callbacks, started: float) -> None:
        self.folder, self.train_loader, self.chain, self.started = folder, train_loader, chain, started
        self.saved: tuple[int, int, int] | None = None  # (epoch, batch, step) of the last point written

    def on_batch_end(self, state: TrainState) -> None:
        every = state.config.train.checkpoint_every
        if every and state.step % every == 0 and state.batch_in_epoch < state.batches_per_epoch:
            self._save_point(state)

    def on_epoch_end(self, state: TrainState) -> None:
        self._save_point(state)

    def on_fit_end(self, state: TrainState) -> None:
        if state.step > 0 and self.saved != (state.epoch, state.batch_in_epoch, state.step):
            self._save_point(state)  # stopped (Ctrl-C, early stop) before this callback saw the event

    def _save_point(self, state: TrainState) -> None:
        elapsed = state.elapsed_before + time.perf_counter() - self.started
        save_resume(self.folder / "resume.safetensors", state, self.train_loader, self.chain.state_dict(), elapsed)
        fault_point("after-resume-write")
        meta = checkpoint_meta(state)
        save_checkpoint(self.folder / "last", state.model, meta)
        if state.ema is not None:
            save_checkpoint(self.folder / "ema", state.ema.module, {**meta, "ema_decay": state.config.train.ema_decay})
        self.saved = (state.epoch, state.batch_in_epoch, state.step)
