"""Checkpoints during training.

After every epoch (and every ``checkpoint_every`` steps, and when training stops early) the resume point
``resume.safetensors`` is written first, then the usable ``last`` checkpoint; ``best`` when the monitored
metric improves; ``ema`` beside them when an EMA is kept; ``epoch-NNNN`` copies for ``keep_last``.

Two callbacks: :class:`BestSaver` (best, keep-last copies) decides once the epoch is measured (EMA included),
before early stopping reads ``state.best``, and :class:`CheckpointSaver` (resume point, last, ema) persists
LAST, so that a resume point holds every callback's state *after* the event — the best so far,
early-stopping counters — not before it. Neither writes anything at the end of a fit that failed.
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
from visiontrain.engine.state import Monitor, TrainState
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
        "monitor": "last" if state.monitor.last else state.monitor.key,
        "config": state.config.to_dict(),
        **({"thresholds": decision_thresholds(state)} if state.task == "multilabel" else {}),
    }


def decision_thresholds(state: TrainState) -> list[float]:
    """A multi-label model's per-label thresholds: tuned on the last epoch's val split (``train.thresholds``),
    else 0.5 — never tuned on the test split, whose score they would flatter."""
    return list(state.thresholds) if state.thresholds else [0.5] * len(state.classes)


class BestSaver(Callback):
    """``best`` when the monitored metric improves (updating ``state.best``), ``epoch-NNNN`` for keep-last."""

    order = "decide"

    def __init__(self, folder: Path, write: bool = True) -> None:
        self.folder = folder
        self.write = write  # every process tracks the best (early stopping needs it); one writes the files

    def on_epoch_end(self, state: TrainState) -> None:
        monitor = state.monitor
        if monitor.key not in state.epoch_metrics:  # a metric this run does not measure: judge by training's
            monitor = Monitor.resolve("auto", None, state.task)
        key, value = monitor.key, state.epoch_metrics[monitor.key]
        if monitor.better(value, state.best["value"] if state.best else None):
            # the last epoch (no validation split) shows the split it was evaluated on, chosen by nothing
            prefix = (state.monitor_split if monitor.last else key.split("/")[0]) + "/"
            state.best = {k.removeprefix(prefix): v for k, v in scalar_metrics(state.epoch_metrics).items()
                          if k.startswith(prefix) and k.removeprefix(prefix) in HEADLINE}
            state.best.update({"epoch": state.epoch, "split": prefix[:-1], "monitor": "last" if monitor.last else key,
                               "value": state.epoch if monitor.last else value})
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
    when training stops. It persists: last in the chain (see the module docstring)."""

    order = "persist"

    def __init__(self, folder: Path, train_loader: Any, chain: Callbacks, started: float) -> None:
        self.folder, self.train_loader, self.chain, self.started = folder, train_loader, chain, started
        self.saved: tuple[int, int, int] | None = None  # (epoch, batch, step) of the last point written

    def on_batch_end(self, state: TrainState) -> None:
        if state.every(state.config.train.checkpoint_every) and state.batch_in_epoch < state.batches_per_epoch:
            self._save_point(state)

    def on_epoch_end(self, state: TrainState) -> None:
        self._save_point(state)

    def on_fit_end(self, state: TrainState) -> None:
        if state.error is not None:  # the state of a failed step: the last point written stays the resume point
            return
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
