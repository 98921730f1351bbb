"""``visiontrain.train``: config → data → model → fit → checkpoints, event files and summary.json."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from visiontrain.config import RunConfig, load_config
from visiontrain.data import DataBundle, build_data
from visiontrain.data.audit import start_lines
from visiontrain.data.guard import loader_errors
from visiontrain.engine import distributed
from visiontrain.engine.build import build_ema, build_mixing, prepare_model, resolve_device, seed_everything
from visiontrain.engine.callbacks import Callback, Callbacks
from visiontrain.engine.checkpoint import _unwrap, load_into, load_weights, read_sidecar
from visiontrain.engine.control import EarlyStopping, EMAUpdate, GracefulInterrupt
from visiontrain.engine.loop import fit, input_preparer
from visiontrain.engine.losses import build_loss, class_weights
from visiontrain.engine.metrics import evaluate_batches, headline
from visiontrain.engine.optim import Schedule, build_optimizer
from visiontrain.engine.precision import Precision
from visiontrain.engine.resume import read_resume, restore, stream_fingerprint
from visiontrain.engine.saver import BestSaver, CheckpointSaver, monitor_key, monitor_mode
from visiontrain.engine.state import TrainState
from visiontrain.engine.timing import LoaderBound, TimeTotals
from visiontrain.errors import CheckpointError, ConfigError, VisiontrainError
from visiontrain.faults import fault_point
from visiontrain.fileio import atomic_write_json, atomic_write_yaml, remove_stale_temps
from visiontrain.logging.console import ConsoleLogger
from visiontrain.logging.files import MetricsFile
from visiontrain.logging.pictures import Pictures
from visiontrain.logging.tensorboard import TensorBoardLogger
from visiontrain.models import ModelInput, count_parameters, get_entry
from visiontrain.models.build import BuiltModel, build_model
from visiontrain.run import Run, summarize, write_samples
from visiontrain.trust import read_config_file

__all__ = ["Run", "find_lr", "make_run_dir", "resolve_device", "train"]


def as_config(config: RunConfig | dict | str | Path | None, *, trust_code: bool = False) -> RunConfig:
    """A RunConfig from what the API was given; a YAML path inside a run folder may not name code (see
    :mod:`visiontrain.trust`) unless ``trust_code``."""
    if config is None:
        return RunConfig()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, str | Path):
        return load_config(read_config_file(config, trust_code=trust_code), where=str(config))
    if isinstance(config, dict):
        return load_config(config)
    raise ConfigError(f"config must be a RunConfig, a mapping or a YAML path, not {type(config).__name__}")


def make_run_dir(cfg: RunConfig) -> Path:
    """A new folder under ``cfg.out``; an existing name gets a -2, -3 … suffix, never overwritten."""
    name = cfg.name or f"{_slug(cfg.data.name)}-{_slug(cfg.model.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(cfg.out)
    candidate, n = root / name, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = root / f"{name}-{n}"
        except OSError as exc:
            raise VisiontrainError(f"cannot create run folder {candidate}: {exc.strerror or exc}; "
                                   "choose another --out") from None


def set_aside(cfg: RunConfig) -> Path | None:
    """For ``--overwrite``: move the existing run folder ``<out>/<name>`` aside (one atomic rename) so the new
    run gets the name; returns where it went (deleted once the new run has started), or None if there was none.

    Only a visiontrain run folder (with its ``config.yaml``) is ever replaced: a typo in ``--name`` or ``--out``
    must not delete someone's data.
    """
    target = Path(cfg.out) / (cfg.name or "")
    if not cfg.name or not target.exists():
        return None
    if not (target / "config.yaml").is_file():
        raise ConfigError(f"--overwrite: {target} is not a visiontrain run folder (no config.yaml), so it is not "
                          "replaced; choose another --name or --out")
    aside = target.with_name(f".{target.name}.replaced-{os.getpid()}")
    try:
        os.replace(target, aside)
    except OSError as exc:
        raise VisiontrainError(f"--overwrite: cannot move {target} aside ({exc.strerror or exc}); check the "
                               "folder's permissions or choose another --name") from None
    return aside


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", Path(text).name or text).strip("_") or "run"


def saved_config(run_dir: str | Path, *, trust_code: bool = False, given: Iterable[str] = ()) -> RunConfig:
    """The resolved config a run was started with (its ``config.yaml``). It may not name code to import or a
    file to unpickle unless ``trust_code`` or the user restates that key (``given``: keys set on the command line)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml); pass runs/<name>")
    return load_config(read_config_file(path, trust_code=trust_code, given=given, run_file=True), where=str(path))


def train(config: RunConfig | dict | str | Path | None = None, *, resume: str | Path | None = None,
          callbacks: list[Callback] | None = None, quiet: bool = False, overwrite: bool = False,
          trust_code: bool = False) -> Run:
    """Train a model, or continue a stopped run with ``resume=<run folder>``; returns the :class:`Run`.

    A config read from a run's files (``resume`` without ``config``, or a YAML path inside a run folder) may not
    name code to import or a file to unpickle unless ``trust_code`` (see :mod:`visiontrain.trust`).

    An existing run folder of the same name is never touched (the new one gets a -2, -3 … suffix) unless
    ``overwrite``: then it is replaced once the new run has started (see :func:`set_aside`).

    >>> run = visiontrain.train({"data": "synthetic", "epochs": 1, "out": "/tmp/vt-doc"})  # doctest: +SKIP
    >>> run.summary["best"]["accuracy"] > 0.5  # doctest: +SKIP
    True
    """
    started = time.perf_counter()
    cfg = (as_config(config, trust_code=trust_code) if config is not None or resume is None
           else saved_config(resume, trust_code=trust_code))
    state, data, built = _build_state(cfg)
    cfg, d = state.config, state.dist  # (under torchrun: the global batch and lr this job runs with)
    try:
        if resume is None:
            if d.main:  # one process owns the run folder; the others learn its name
                _start_run_dir(state, cfg, overwrite)
            state.run_dir = Path(distributed.broadcast_text(str(state.run_dir), d, state.device))
        else:
            state.run_dir = Path(resume)
        chain = _callbacks(state, data, [*built.callbacks, *(callbacks or [])], quiet or not d.main, started)
        if resume is not None:
            _resume(state, data, chain)  # first: a refused resume must leave the run folder untouched
        if d.main:
            data.write_artifacts(state.run_dir)  # split.json, bad_images.txt (kept up to date if more turn up)
            built.report(state.run_dir, quiet)  # what --pretrained/--init-from loaded and what is frozen
            if not quiet:
                _print_header(cfg, data, state)
        with loader_errors(transfer=False):  # a worker killed mid-step (out of memory?): one line, no traceback
            fit(state, data.loaders, chain)
        distributed.barrier(d)  # best.json is written by rank 0 and read back by every rank
        summary = summarize(state, data, state.elapsed_before + time.perf_counter() - started)
        summary["time"] = next(cb for cb in chain.items if isinstance(cb, TimeTotals)).summary()
        if "test" in data.loaders and state.best is not None:
            summary["test"] = _test_best(state, data)
        if d.main:
            write_samples(data, state.run_dir / "samples")
            atomic_write_json(state.run_dir / "summary.json", summary)
    finally:
        distributed.teardown(d)
    return Run(state.run_dir, cfg, summary)


def _start_run_dir(state: TrainState, cfg: RunConfig, overwrite: bool) -> None:
    """Create the run folder and its config.yaml; with ``overwrite``, the old folder goes only after that."""
    aside = set_aside(cfg) if overwrite else None
    try:
        state.run_dir = make_run_dir(cfg)
        atomic_write_yaml(state.run_dir / "config.yaml", cfg.to_dict())
        fault_point("after-config")  # the earliest moment `--resume` can pick the run up again
    except BaseException:
        if aside is not None and not (Path(cfg.out) / str(cfg.name)).exists():
            os.replace(aside, Path(cfg.out) / str(cfg.name))  # the new run never started: put the old one back
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def find_lr(config: RunConfig | dict | str | Path | None = None, *, steps: int = 100, start_lr: float = 1e-6,
            end_lr: float = 1.0, out: str | Path | None = None, trust_code: bool = False) -> dict[str, Any]:
    """The learning-rate range test on a throwaway copy of the configured model and data.

    Writes ``lr_find.png``, ``lr_find.json`` and TensorBoard scalars into ``out`` (default
    ``<runs>/lr-find-<data>-<model>-<time>``) and returns ``{"lrs", "losses", "suggestion", "folder"}``.
    """
    from visiontrain import plots
    from visiontrain.engine.lr_find import check_sweep, lr_range_test

    check_sweep(steps, start_lr, end_lr)
    cfg = as_config(config, trust_code=trust_code)
    state, data, _ = _build_state(cfg)
    result = lr_range_test(state, data.loaders["train"], start_lr, end_lr, steps)
    name = f"lr-find-{_slug(cfg.data.name)}-{_slug(cfg.model.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(out) if out is not None else make_run_dir(cfg.override({"name": name}))
    result["folder"] = str(folder)
    mark = (result["suggestion"], f"suggested {result['suggestion']:.2e}") if result["suggestion"] else None
    fig = plots.curve_figure(result["lrs"], {"smoothed loss": result["losses"]}, "learning rate", "loss",
                             "learning-rate range test", log_x=True, mark=mark)
    plots.save_png(fig, folder / "lr_find.png")
    atomic_write_json(folder / "lr_find.json", result)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for i, (lr, loss) in enumerate(zip(result["lrs"], result["losses"], strict=True)):
            writer.add_scalar("lr_find/loss", loss, i)
            writer.add_scalar("lr_find/lr", lr, i)
    return result


def _build_state(cfg: RunConfig) -> tuple[TrainState, DataBundle, BuiltModel]:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    d, device = distributed.setup(resolve_device(cfg.train.device), cfg.train.dist_timeout_s)
    cfg = distributed.effective_config(cfg, d)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    entry = get_entry(cfg.model.name)
    data = build_data(cfg.data, cfg.train.seed, channels=cfg.model.in_channels or entry.channels,
                      size=entry.default_size, pin_memory=device.type == "cuda", device=device)
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
    auto_key = "val/loss" if task == "regression" else "val/accuracy"
    key = cfg.train.monitor if cfg.train.monitor != "auto" else auto_key
    schedule = Schedule(optimizer, cfg.optim, steps, cfg.train.epochs, monitor_mode(key))
    train_labels = data.source.splits["train"].labels if task == "classification" else None
    weights = class_weights(cfg.train, train_labels, len(classes))
    loss_fn = build_loss(cfg.train, task, weights.to(device) if weights is not None else None)
    state = TrainState(cfg, model, optimizer, schedule, Precision(cfg.train.precision, device), loss_fn, device,
                       prep, classes, Path(cfg.out), steps, batches, task=task, dist=d,
                       batch_transform=build_mixing(cfg.train, len(classes)),
                       ema=build_ema(_unwrap(model), cfg.train.ema_decay))
    state.eval_split = next((s for s in ("val", "test") if s in data.loaders), None)
    return state, data, built


def _callbacks(state: TrainState, data: DataBundle, extra: list[Callback], quiet: bool, started: float) -> Callbacks:
    cfg = state.config.train
    prepare = input_preparer(state.prep.normalizer(), cfg.channels_last)
    chain = Callbacks()
    chain.items += [EMAUpdate(prepare)] if state.ema is not None else []
    main = state.dist.main  # under torchrun only rank 0 writes logs, event files and checkpoints
    chain.items += [] if quiet else [ConsoleLogger()]
    tensorboard = TensorBoardLogger(state.run_dir)
    chain.items += [MetricsFile(state.run_dir / "metrics.jsonl"), tensorboard,
                    Pictures(state.run_dir / "plots", tensorboard)] if main else []
    chain.items += [BestSaver(state.run_dir / "checkpoints", write=main)]
    chain.items += [EarlyStopping(cfg.early_stop_patience)] if cfg.early_stop_patience else []
    chain.items += [GracefulInterrupt(), TimeTotals(), *extra]
    chain.items += [LoaderBound(data.loaders["train"])] if main else []  # one line when the data starves the model
    # last: its resume point must hold every other callback's state after the event
    saver = CheckpointSaver(state.run_dir / "checkpoints", data.loaders["train"], chain, started)
    chain.items += [saver] if main else []
    return chain


def _resume(state: TrainState, data: DataBundle, chain: Callbacks) -> None:
    """Load the run's resume point and prove the data stream is the one it was trained on; a run stopped
    before its first resume point starts again from the beginning (see :func:`_restart`)."""
    path = state.run_dir / "checkpoints" / "resume.safetensors"
    if not path.exists():
        _restart(state)
        return
    meta, tensors = read_resume(path)
    now = stream_fingerprint(data.loaders["train"], meta["epoch"], meta["batch_in_epoch"])
    if now != meta["fingerprint"]:
        raise CheckpointError(f"{state.run_dir}: the training data or its order differ from the interrupted run "
                              "(sample-stream fingerprint mismatch); resume with the same data, seed and batch size")
    chain.load_state_dict(meta.get("callbacks", {}))
    restore(state, meta, tensors, before_optimizer=lambda: chain.fire("on_resume", state))
    remove_stale_temps(state.run_dir)  # what the killed process was writing: never read, only in the way
    state.resumed_from = {"epoch": state.epoch, "batch": state.batch_in_epoch, "step": state.step}
    where = (f"after its last epoch ({state.epoch}; training is complete, finishing the run)"
             if state.epoch >= state.config.train.epochs else
             f"at epoch {state.epoch + 1}, batch {state.batch_in_epoch} (step {state.step})")
    if state.dist.main:
        print(f"resuming {state.run_dir} {where}; sample stream verified (fingerprint {now[:12]})",
              file=sys.stderr, flush=True)


# What a run writes into checkpoints/ before its first resume point: ``best`` and ``keep_last`` copies, written at
# the end of the first epoch just before the resume point (engine/saver.py).
_EARLY_CHECKPOINT = re.compile(r"(best|epoch-\d+)\.(json|safetensors)")


def _restart(state: TrainState) -> None:
    """Resume a run that was stopped after its config.yaml and before its first resume point.

    Nothing of it can be continued, and everything it wrote a fresh start writes again from the same config and
    seed — so it starts again, in its own folder, as if it had never run: what the stopped process logged
    (metrics.jsonl, TensorBoard events) and checkpointed (best, epoch copies) goes first, so no step is logged
    twice. A folder with ``last`` or ``summary.json`` but no resume point lost it some other way (deleted by
    hand?): that is refused, and nothing is touched.
    """
    folder = state.run_dir
    done = [name for name in ("checkpoints/last.json", "summary.json") if (folder / name).exists()]
    if done:
        raise CheckpointError(f"{folder} has {done[0]} but no checkpoints/resume.safetensors, so it cannot continue "
                              "exactly; start a new run (--init-from RUN starts from its weights)")
    if state.dist.main:
        stale = [folder / "metrics.jsonl", *folder.glob("events.out.tfevents.*"),
                 *(p for p in (folder / "checkpoints").glob("*") if _EARLY_CHECKPOINT.fullmatch(p.name))]
        for path in stale:
            path.unlink(missing_ok=True)
        remove_stale_temps(folder)  # what the killed process was writing
        print(f"resuming {folder}: it stopped before its first resume point, so it starts again from the beginning "
              "(same config and seed)", file=sys.stderr, flush=True)


def _test_best(state: TrainState, data: DataBundle) -> dict[str, Any]:
    """Test-split metrics of the best checkpoint, read back from disk (proving the file round-trips)."""
    sidecar = state.run_dir / "checkpoints" / "best.json"
    model = _unwrap(state.model)
    load_into(model, load_weights(sidecar, read_sidecar(sidecar)), sidecar)
    prepare = input_preparer(state.prep.normalizer(), state.config.train.channels_last)
    full = evaluate_batches(model, data.loaders["test"], prepare, state.device, len(state.classes), task=state.task,
                            reduce=state.dist.reducer())
    return {**headline(full), "epoch": state.best["epoch"] if state.best else None, "checkpoint": "best"}


def _precision_note(state: TrainState) -> str:
    mode = state.precision.mode
    return "" if mode == "32" else f" in {mode} mixed precision"


def _print_header(cfg: RunConfig, data: DataBundle, state: TrainState) -> None:
    counts = ", ".join(f"{len(v):,} {k}" for k, v in data.source.splits.items())
    p = data.prep
    print(f"visiontrain: {cfg.model.name} ({count_parameters(state.model):,} parameters) on {cfg.data.name} "
          f"[{counts}; {len(data.classes)} classes, {p.channels}x{p.size}x{p.size}], "
          f"{cfg.train.epochs} epochs on {state.device}{_precision_note(state)}", file=sys.stderr, flush=True)
    from visiontrain.cli import printable  # a note may name a folder: escaped like an error

    for note in data.source.notes:
        print(f"note: {printable(note)}", file=sys.stderr, flush=True)
    for line in start_lines(data.source, cfg.data.name):  # duplicates and train/val leakage, as `data info` finds
        print(printable(line), file=sys.stderr, flush=True)
    print(f"run folder: {state.run_dir} (monitor: {monitor_key(state)})", file=sys.stderr, flush=True)
