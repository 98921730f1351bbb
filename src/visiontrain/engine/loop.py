"""The training loop: read it top to bottom.

``fit`` runs epochs; ``train_one_epoch`` is the seeds' routine (docs/cookbook.md §6) done right —
``model.train()``, device, normalize, autocast forward, loss, (scaled) backward, clip, step, schedule — with gradient
accumulation, and ``evaluate_batches`` sums over the whole split. Logs, TensorBoard, checkpoints, EMA, early stopping
and progress are callbacks; the loop has no ``if tensorboard:``.

A loss or weights that stop being finite (``--lr 1e30``) end training with one line naming the step, before
anything is saved: checks run where the host waits anyway (log points, checkpoints, epoch ends), on the
device-side loss sum of the epoch, so the hot path gains no synchronisation.
"""

from __future__ import annotations

import math
import time

import torch

from visiontrain.data.loaders import Loader
from visiontrain.engine.callbacks import Callbacks, StopTraining
from visiontrain.engine.distributed import broadcast_buffers
from visiontrain.engine.metrics import evaluate_batches, headline
from visiontrain.engine.state import TrainState
from visiontrain.engine.timing import DataTimer
from visiontrain.errors import DivergedError

MISTAKES_SHOWN = 16  # most confident validation mistakes kept per epoch for TensorBoard and plots


def fit(state: TrainState, loaders: dict[str, Loader], callbacks: Callbacks) -> TrainState:
    """Train until ``config.train.epochs``, validating after each epoch on ``state.eval_split``.

    ``on_fit_end`` runs however training ends; after an exception it runs with ``state.error`` set (the
    callbacks close their files and restore the Ctrl-C handler but save nothing) and the exception propagates.
    """
    state.eval_loader = loaders.get(state.eval_split) if state.eval_split else None
    state.finite_step = state.step  # a resume point was checked before it was saved
    try:
        try:
            callbacks.fire("on_fit_start", state)
            while state.epoch < state.config.train.epochs:
                _epoch(state, loaders["train"], callbacks)
        except StopTraining as stop:
            state.stop_reason = stop.reason
            check_finite(state)  # on_fit_end saves this point: never non-finite weights
    except BaseException as exc:  # KeyboardInterrupt (a second Ctrl-C) too: nothing is saved from a broken state
        state.error = exc
        raise
    finally:
        callbacks.fire_fit_end(state)
    return state


def _epoch(state: TrainState, loader: Loader, callbacks: Callbacks) -> None:
    callbacks.fire("on_epoch_start", state)
    metrics = {f"train/{k}": v for k, v in train_one_epoch(state, loader, callbacks).items()}
    if state.eval_loader is not None:
        broadcast_buffers(state.raw_model, state.dist)
        full = evaluate_batches(state.raw_model, state.eval_loader, state.prepare, state.device, len(state.classes),
                                mistakes=MISTAKES_SHOWN, task=state.task, reduce=state.dist.reducer(),
                                gather=state.dist.gatherer(), tune=state.config.train.thresholds)
        metrics.update({f"{state.eval_split}/{k}": v for k, v in headline(full).items()})
        metrics[f"{state.eval_split}/_full"] = full
        if state.eval_split == "val" and "tuned_thresholds" in full:  # multi-label; never tuned on test
            state.thresholds = list(full["tuned_thresholds"])
    state.epoch_metrics = metrics
    state.schedule.step_epoch(metrics.get(state.monitor.key))  # reduce-on-plateau; else a no-op
    state.epoch += 1
    state.batch_in_epoch = 0
    callbacks.fire("on_epoch_end", state)


def train_one_epoch(state: TrainState, loader: Loader, callbacks: Callbacks) -> dict[str, float]:
    model, optimizer, device, cfg = state.model, state.optimizer, state.device, state.config.train
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    if state.batch_in_epoch == 0:
        state.reset_sums()
    loader.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
    accumulate, total = cfg.accumulate, state.batches_per_epoch
    timer = DataTimer(loader)  # seconds inside the loader's next(): the epoch's data wait (engine/timing.py)
    start, cpu_start = time.perf_counter(), time.process_time()  # process_time: this process's CPU-seconds
    for index, (images, labels) in enumerate(timer, start=state.batch_in_epoch):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        inputs, targets = state.prepare(images), labels
        if state.batch_transform is not None:
            inputs, targets = state.batch_transform(inputs, labels)
        if index % accumulate == 0:
            optimizer.zero_grad(set_to_none=True)  # grads live on until the next cycle, for grad-norm logs
        boundary = (index + 1) % accumulate == 0 or index + 1 == total
        # The last cycle of an epoch may be short: scale by its real length so every step is a mean.
        cycle = min(accumulate, total - (index - index % accumulate))
        with state.dist.sync_gradients(model, boundary), state.precision.autocast():
            logits = model(inputs)
            loss = state.loss_fn(logits, targets)
        state.precision.backward(loss * _shard_weight(state, loader, index, len(labels)) / cycle)
        _accumulate_sums(state, loss, logits, labels)
        if not boundary:
            continue
        state.step_lr = state.lr
        state.grad_norm = state.precision.step(optimizer, params, cfg.clip_grad_norm)
        state.schedule.step_batch()
        state.step += 1
        state.batch_in_epoch = index + 1
        state.images, state.labels, state.loss = images, labels, loss
        save_point = state.every(cfg.checkpoint_every)
        if save_point or state.log_due():  # the logger and the saver sync the host here anyway
            check_finite(state, weights=save_point)
        callbacks.fire("on_batch_end", state)
    check_finite(state)  # before validation and the epoch's checkpoints
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    sums = {k: state.dist.reducer()(v.clone()) for k, v in state.sums.items()}  # every rank's share
    seen = int(sums["seen"])
    accuracy = {"accuracy": float(sums["correct"]) / max(seen, 1)} if state.task == "classification" else {}
    return {"loss": float(sums["loss_sum"]) / max(seen, 1), **accuracy,
            "epoch_time_s": elapsed, "epoch_cpu_s": cpu, "img_per_s": seen / elapsed if elapsed > 0 else 0.0,
            "lr": state.lr, **timer.split(elapsed)}


def check_finite(state: TrainState, weights: bool = True) -> None:
    """Raise DivergedError when this epoch's loss sum (every batch's loss, on the device) or, with ``weights``
    (before a checkpoint: reading every weight costs ~40 ms for ResNet-18 on a CPU), a trained weight is no
    longer finite; one host sync. Every process takes part (the flag is summed over ranks)."""
    params = [p.detach() for p in state.model.parameters() if p.requires_grad] if weights else []
    bad = (~torch.isfinite(state.sums["loss_sum"])).to(torch.int64)
    if params:
        bad = bad + (~torch.stack([torch.isfinite(p).all() for p in params]).all()).to(torch.int64)
    if int(state.dist.reducer()(bad)) == 0:
        state.finite_step = state.step
        return
    last_good, loss = state.finite_step, float(state.sums["loss_sum"])
    what = "the weights are not finite" if math.isfinite(loss) else f"the training loss is {loss}"
    raise DivergedError(f"training diverged: {what} at step {state.step} (epoch {state.epoch + 1}, batch "
                        f"{state.batch_in_epoch} of {state.batches_per_epoch}; finite at step {last_good}); nothing "
                        f"after step {last_good} was saved, the run's checkpoints are kept — lower --lr (it is "
                        f"{state.config.optim.lr:g}) or set --clip-grad-norm, then start again or --resume")


def _shard_weight(state: TrainState, loader: Loader, index: int, local: int) -> float:
    """With several processes DDP averages the ranks' gradients; weighting each rank's mean loss by its share
    of the global batch makes that average the global batch's mean, even for an uneven last batch."""
    if not state.dist.enabled:
        return 1.0
    global_n = min(loader.batch_size, loader.num_samples - index * loader.batch_size)
    return local * state.dist.world / global_n


def _accumulate_sums(state: TrainState, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
    n = labels.shape[0]
    state.sums["loss_sum"] += loss.detach().double() * n
    if logits.dim() == 2 and labels.dim() == 1:  # classification: exact correct count
        state.sums["correct"] += (logits.detach().argmax(dim=1) == labels).sum()
    state.sums["seen"] += n
