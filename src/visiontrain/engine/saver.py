"""Saves ``last`` after every epoch and ``best`` when the monitored validation accuracy improves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visiontrain.engine.callbacks import Callback
from visiontrain.engine.checkpoint import save_checkpoint
from visiontrain.engine.state import TrainState
from visiontrain.logging.files import scalar_metrics


def checkpoint_meta(state: TrainState) -> dict[str, Any]:
    """What a later command needs to rebuild and use the model without the user restating it."""
    return {
        "task": "classification",
        "model": {"name": state.config.model.name, "args": dict(state.config.model.args)},
        "classes": list(state.classes),
        "preprocessing": state.prep.to_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "metrics": scalar_metrics(state.epoch_metrics),
        "monitor": f"{state.monitor_split}/accuracy",
        "config": state.config.to_dict(),
    }


class CheckpointSaver(Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_epoch_end(self, state: TrainState) -> None:
        meta = checkpoint_meta(state)
        save_checkpoint(self.folder / "last", state.model, meta)
        split = state.monitor_split
        key = f"{split}/accuracy"
        value = state.epoch_metrics.get(key)
        if value is None:  # no validation split: the best model is the latest one
            key, value = "train/accuracy", state.epoch_metrics["train/accuracy"]
        if state.best is None or value > state.best["accuracy"]:
            prefix = key.split("/")[0] + "/"
            state.best = {k.removeprefix(prefix): v for k, v in scalar_metrics(state.epoch_metrics).items()
                          if k.startswith(prefix) and k.removeprefix(prefix) in ("accuracy", "loss", "top5")}
            state.best.update({"epoch": state.epoch, "split": split})
            save_checkpoint(self.folder / "best", state.model, meta)
