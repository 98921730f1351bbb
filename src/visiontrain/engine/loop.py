"""The training loop: read it top to bottom.

``fit`` runs epochs; ``train_one_epoch`` is the seeds' routine done right — ``model.train()``, device,
normalize, forward, loss, backward, step, schedule — and ``evaluate_batches`` sums over the whole split.
Everything else (logs, TensorBoard, checkpoints, progress) happens in callbacks.
"""

from __future__ import annotations

import time

import torch

from visiontrain.data import Normalizer
from visiontrain.data.loaders import Loader
from visiontrain.engine.callbacks import Callbacks, StopTraining
from visiontrain.engine.metrics import evaluate_batches, headline
from visiontrain.engine.state import TrainState


def fit(state: TrainState, loaders: dict[str, Loader], callbacks: Callbacks) -> TrainState:
    """Train for ``config.train.epochs`` epochs, validating after each on 'val' (else 'test')."""
    normalizer = state.prep.normalizer()
    eval_split = next((s for s in ("val", "test") if s in loaders), None)
    callbacks.fire("on_fit_start", state)
    try:
        while state.epoch < state.config.train.epochs:
            callbacks.fire("on_epoch_start", state)
            train_metrics = train_one_epoch(state, loaders["train"], normalizer, callbacks)
            metrics = {f"train/{k}": v for k, v in train_metrics.items()}
            if eval_split is not None:
                full = evaluate_batches(state.model, loaders[eval_split], state_prepare(state, normalizer),
                                        state.device, len(state.classes))
                metrics.update({f"{eval_split}/{k}": v for k, v in headline(full).items()})
                metrics[f"{eval_split}/_full"] = full  # type: ignore[assignment]
            metrics["_split"] = eval_split or "train"  # type: ignore[assignment]
            state.epoch_metrics = metrics
            state.epoch += 1
            callbacks.fire("on_epoch_end", state)
    except StopTraining as stop:
        state.stop_reason = stop.reason
    except KeyboardInterrupt:
        state.stop_reason = "interrupted (Ctrl-C)"
    callbacks.fire("on_fit_end", state)
    return state


def state_prepare(state: TrainState, normalizer: Normalizer):
    """uint8 batch on the device → normalized float input in the model's memory format."""
    channels_last = state.config.train.device != "mps"

    def prepare(images: torch.Tensor) -> torch.Tensor:
        x = normalizer(images)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    return prepare


def train_one_epoch(state: TrainState, loader: Loader, normalizer: Normalizer, callbacks: Callbacks) -> dict:
    model, optimizer, device = state.model, state.optimizer, state.device
    prepare = state_prepare(state, normalizer)
    model.train()
    loader.set_epoch(state.epoch)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    start = time.perf_counter()
    for state.batch_in_epoch, (images, labels) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(prepare(images))
        loss = state.loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if state.scheduler is not None:
            state.scheduler.step()
        # Sums stay on the device: no host sync per step.
        loss_sum += loss.detach().double() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
        state.step += 1
        state.images, state.loss = images, loss
        callbacks.fire("on_batch_end", state)
    elapsed = time.perf_counter() - start
    return {"loss": float(loss_sum) / max(seen, 1), "accuracy": float(correct) / max(seen, 1),
            "epoch_time_s": elapsed, "img_per_s": seen / elapsed if elapsed > 0 else 0.0,
            "lr": state.lr}
