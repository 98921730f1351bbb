"""The composition root's wiring: from one config to the training state (data, model, optimizer, schedule,
precision, loss, EMA, mixing) and to the callbacks that watch and steer it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from visiontrain import host
from visiontrain.checkpoint.format import raw_model
from visiontrain.config import RunConfig
from visiontrain.data import DataBundle, build_data
from visiontrain.engine import distributed
from visiontrain.engine.callbacks import Callback, Callbacks
from visiontrain.engine.control import EarlyStopping, EMAUpdate, GracefulInterrupt
from visiontrain.engine.losses import build_loss, label_weights
from visiontrain.engine.optim import Schedule, build_optimizer
from visiontrain.engine.precision import Precision
from visiontrain.engine.saver import BestSaver, CheckpointSaver
from visiontrain.engine.setup import build_ema, build_mixing, prepare_model, resolve_device, seed_everything
from visiontrain.engine.state import Monitor, TrainState
from visiontrain.engine.timing import LoaderBound, TimeTotals
from visiontrain.engine.unfreeze import GradualUnfreeze
from visiontrain.models import ModelInput, get_entry
from visiontrain.models.assembly import BuiltModel, build_model
from visiontrain.models.pretrained import describe_weights
from visiontrain.optional import require_all
from visiontrain.watch.console import ConsoleLogger
from visiontrain.watch.files import MetricsFile, ResultsFile
from visiontrain.watch.mlflow_tracker import MlflowTracker
from visiontrain.watch.pictures import Pictures
from visiontrain.watch.tensorboard import TensorBoardLogger
from visiontrain.watch.tracking import Tracker, Tracking

# torch's own default (one thread per physical core), read before any run sets it: `auto` never goes above it, so
# an idle machine trains as it did before (a second thread per hyperthreaded core rarely helps a conv net)
_TORCH_THREADS = torch.get_num_threads()


def build_state(cfg: RunConfig) -> tuple[TrainState, DataBundle, BuiltModel]:
    host.keep_freed_memory()  # no page faults from memory handed back and taken again at every step (host.py)
    threads = set_threads(cfg.train.threads, cfg.train.deterministic)
    d, device = distributed.setup(resolve_device(cfg.train.device), cfg.train.dist_timeout_s)
    cfg = distributed.effective_config(cfg, d)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    entry = get_entry(cfg.model.name)
    # published weights say the input they were made for: its side, and how photos are resized and cropped
    weights = describe_weights(cfg.model.name, cfg.model.pretrained, cfg.model.offline)
    data = build_data(cfg.data, cfg.train.seed, channels=cfg.model.in_channels or entry.channels,
                      size=weights.size if weights else entry.default_size, pin_memory=device.type == "cuda",
                      device=device, photo_eval=weights.eval_transforms() if weights else None,
                      epochs=cfg.train.epochs)
    if d.enabled:  # each process takes its part of every global batch
        for name, loader in data.loaders.items():
            loader.shard(d.rank, d.world, drop_tail=name == "train")
    classes = data.classes
    built = build_model(cfg.model, ModelInput(data.prep.channels, data.prep.size, len(classes)))
    prep = built.preprocessing(data.prep)  # pretrained weights bring their own normalization
    model = prepare_model(built.model, device, cfg.train)
    optimizer = build_optimizer(model, cfg.optim, lr_scale=built.lr_scale)
    model = distributed.wrap(model, d, device, cfg.train.sync_bn)
    batches = len(data.loaders["train"])
    steps = -(-batches // cfg.train.accumulate)
    task = data.source.task
    eval_split = next((s for s in ("val", "test") if s in data.loaders), None)
    monitor = Monitor.resolve(cfg.train.monitor, eval_split, task)
    schedule = Schedule(optimizer, cfg.optim, steps, cfg.train.epochs, monitor.mode)
    weights = label_weights(cfg.train, task, data.source.splits["train"].labels, len(classes))
    loss_fn = build_loss(cfg.train, task, weights.to(device) if weights is not None else None)
    state = TrainState(cfg, model, optimizer, schedule, Precision(cfg.train.precision, device), loss_fn, device,
                       prep, classes, Path(cfg.out), steps, batches, task=task, dist=d,
                       batch_transform=build_mixing(cfg.train, len(classes), task),
                       ema=build_ema(raw_model(model), cfg.train.ema_decay), eval_split=eval_split, monitor=monitor)
    state.threads = threads
    return state, data, built


def set_threads(setting: int | str | None, deterministic: bool = False) -> str:
    """Apply ``train.threads``; returns the count and why, for the run's header line and summary.json.

    ``auto`` keeps an ``OMP_NUM_THREADS`` set in the environment (by the user, or by torchrun for several
    processes on one machine), else asks :func:`visiontrain.host.auto_threads` (under ``deterministic``: every
    usable core, whatever the load, so that a resumed run computes as the first did). torch's inter-op pool is left
    alone: its threads wait on a condition variable (they never spin) and serve only ``torch.jit.fork``."""
    if setting in (None, "torch"):
        return f"{torch.get_num_threads()} (torch's choice)"
    if setting != "auto":
        torch.set_num_threads(int(setting))
        return str(setting)
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        torch.set_num_threads(int(given))
        return f"{given} (auto: OMP_NUM_THREADS)"
    choice = host.auto_threads(cap=_TORCH_THREADS, deterministic=deterministic)
    torch.set_num_threads(choice.threads)
    waiting = host.wait_passively(choice)  # torch is loaded: this only reports (the CLI set it before)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        waiting = "OpenMP waits passively"
    elif waiting == "too late":
        waiting = "OpenMP spins: set OMP_WAIT_POLICY=PASSIVE before importing torch"
    return f"{choice.threads} ({choice.reason}{'; ' + waiting if waiting else ''})"


def build_callbacks(state: TrainState, data: DataBundle, built: BuiltModel, extra: list[Callback], quiet: bool,
                    started: float) -> Callbacks:
    """The callbacks a run's config asks for; each says its phase (``order``), the chain calls them by phase."""
    cfg = state.config.train
    main = state.dist.main  # under torchrun only rank 0 writes logs, event files and checkpoints
    items: list[Callback] = [EMAUpdate()] if state.ema is not None else []
    items += [] if quiet else [ConsoleLogger()]
    if main:
        tensorboard = TensorBoardLogger(state.run_dir)
        items += [MetricsFile(state.run_dir / "metrics.jsonl"), ResultsFile(state.run_dir / "results.csv")]
        items += [tensorboard]
        items += [Pictures(state.run_dir / "plots", tensorboard)] if cfg.plots else []
        items += [LoaderBound(data.loaders["train"])]  # one line when the data starves the model
        items += [Tracking(tracker) for tracker in build_trackers(state)]
    items += [BestSaver(state.run_dir / "checkpoints", write=main)]
    items += [EarlyStopping(cfg.early_stop_patience)] if cfg.early_stop_patience else []
    items += [GracefulInterrupt(), TimeTotals()]
    if built.unfreeze_at is not None:  # gradual unfreezing: an engine callback, from what the model build says
        items += [GradualUnfreeze(state.raw_model, built.frozen, built.unfreeze_at, built.lr_scale)]
    chain = Callbacks([*items, *extra])
    if main:  # the resume point holds the state of the whole chain
        chain.add(CheckpointSaver(state.run_dir / "checkpoints", data.loaders["train"], chain, started))
    return chain


TRACKER_MODULES = {"mlflow": ["mlflow"]}  # what each tracker of ``train.track`` imports (its extra's name)


def check_trackers(cfg: RunConfig) -> None:
    """Before anything is built: a tracker whose extra is missing is one line saying how to install it."""
    for name in dict.fromkeys(cfg.train.track):
        require_all(TRACKER_MODULES[name], name, f"--track {name}")


def build_trackers(state: TrainState) -> list[Tracker]:
    """The experiment trackers ``train.track`` names (each opens its store now: a bad URI stops the run here)."""
    cfg = state.config
    makers = {"mlflow": lambda: MlflowTracker(cfg.train.track_uri, cfg.train.track_experiment, Path(cfg.out))}
    return [makers[name]() for name in dict.fromkeys(cfg.train.track)]
