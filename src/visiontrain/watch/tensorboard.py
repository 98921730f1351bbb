"""TensorBoard as a callback: scalars, a grid of training images, and the model graph.

Every point's x is the global optimizer step, so a resumed run can purge what a killed process logged
after its last checkpoint (``purge_step``) and the curves never hold duplicate steps.
Tags: ``train/loss``, ``train/lr`` and ``train/grad_norm`` every ``log_every`` steps (and at an epoch's end when
none of its steps was one of those: a short run logs them once per epoch); per epoch ``epoch``, ``train/epoch_lr``,
``train/accuracy``, ``train/epoch_loss``, ``<split>/loss``, ``<split>/accuracy``, ``<split>/top5`` (and
``<split>_ema/*`` with an EMA), ``time/epoch_s``, ``time/img_per_s``, ``time/data_wait_s``,
``time/compute_s`` and ``time/data_wait_frac``; images ``train/batch`` (none with ``--plots off``); the
graph of the model trained (the plain module, under ``--compile`` and DDP too); at the end, unless training
failed, the hyperparameters with the final metrics.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from visiontrain.config import hparam_values
from visiontrain.engine.callbacks import Callback
from visiontrain.engine.metrics import HEADLINE
from visiontrain.engine.state import TrainState

EPOCH_TAGS = {
    "train/accuracy": "train/accuracy",
    "train/loss": "train/epoch_loss",
    "train/lr": "train/epoch_lr",  # every epoch, however few its steps
    "train/epoch_time_s": "time/epoch_s",
    "train/img_per_s": "time/img_per_s",
    "train/data_wait_s": "time/data_wait_s",  # seconds waiting for the loader (engine/timing.py)
    "train/compute_s": "time/compute_s",
    "train/data_wait_frac": "time/data_wait_frac",
}


def step_scalars(state: TrainState) -> dict[str, float]:
    """The scalars of a logged step (``state.log_due()``): loss, learning rate, gradient norm."""
    return {"train/loss": state.loss_value(), "train/lr": state.step_lr, "train/grad_norm": state.grad_norm_value()}


def epoch_scalars(state: TrainState) -> dict[str, float]:
    """The scalars of an epoch's end, by TensorBoard tag (every tracker gets the same ones)."""
    m = state.epoch_metrics
    out = {"epoch": float(state.epoch)}
    out.update({tag: m[key] for key, tag in EPOCH_TAGS.items() if key in m})
    for key, value in m.items():
        split, _, name = key.partition("/")
        if split != "train" and name in HEADLINE:
            out[key] = value
    return out


def final_scalars(state: TrainState) -> dict[str, float]:
    """The final metrics shown beside the hyperparameters (``hparams/…``), logged one step past the last."""
    metrics = {f"hparams/{k}": v for k, v in state.epoch_metrics.items()
               if isinstance(v, float) and k.split("/")[-1] in HEADLINE}
    if state.best is not None:
        metrics["hparams/best_value"] = float(state.best["value"])
    return metrics


class TensorBoardLogger(Callback):
    order = "observe"

    def __init__(self, log_dir: Path, max_images: int = 32) -> None:
        self.log_dir, self.max_images = log_dir, max_images
        self.writer: Any = None
        self._shown_batch = False

    def on_fit_start(self, state: TrainState) -> None:
        from torch.utils.tensorboard import SummaryWriter

        resumed = state.resumed_from is not None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=state.step + 1 if resumed else None)
        self._shown_batch = resumed or not state.config.train.plots  # --plots off: no pictures at all
        if not resumed and state.config.train.plots:  # nor the graph: tracing it costs ~0.5 s of a short run
            self._add_graph(state)

    def on_batch_end(self, state: TrainState) -> None:
        if not self._shown_batch and state.images is not None:
            images = state.images[: self.max_images].detach().to("cpu")
            self.writer.add_images("train/batch", images, state.step)  # uint8 NCHW: shown as is
            self._shown_batch = True
        if state.log_due():
            for tag, value in step_scalars(state).items():
                self.writer.add_scalar(tag, value, state.step)

    def on_epoch_end(self, state: TrainState) -> None:
        for tag, value in epoch_scalars(state).items():
            self.writer.add_scalar(tag, value, state.step)
        self.writer.flush()

    def on_fit_end(self, state: TrainState) -> None:
        if self.writer is None:
            return
        try:
            if state.error is None:  # a failed fit has no final metrics to compare runs by
                self._add_hparams(state)
        finally:
            self.writer.close()

    def _add_hparams(self, state: TrainState) -> None:
        """Hyperparameters with the final metrics, so runs compare side by side in the HParams tab."""
        from torch.utils.tensorboard.summary import hparams

        params = hparam_values(state.config)  # the keys the config schema marks as hyperparameters
        metrics = final_scalars(state)
        if not metrics:
            return
        for part in hparams(params, metrics):
            self.writer.file_writer.add_summary(part)
        # One step past the last: a resume's purge (which starts at step + 1) clears them before they are
        # written again, so a run resumed after it finished training never shows them twice.
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, state.step + 1)

    def _add_graph(self, state: TrainState) -> None:
        prep = state.prep
        example = torch.zeros(1, prep.channels, prep.size, prep.size, device=state.device)
        was_training = state.raw_model.training
        state.raw_model.eval()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.writer.add_graph(state.raw_model, example)
        except Exception as exc:  # tracing is best effort: a model that cannot be traced still trains
            print(f"note: TensorBoard graph skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
        finally:
            state.raw_model.train(was_training)
