"""``visiontrain.train``: config → data → model → fit → checkpoints, event files and summary.json."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from visiontrain.checkpoint.format import load_into, load_weights, read_sidecar
from visiontrain.config import RunConfig
from visiontrain.data import DataBundle
from visiontrain.data.audit import start_lines
from visiontrain.data.guard import loader_errors
from visiontrain.engine import distributed
from visiontrain.engine.callbacks import Callback, Callbacks
from visiontrain.engine.loop import fit
from visiontrain.engine.lr_find import check_sweep, lr_range_test
from visiontrain.engine.metrics import evaluate_batches, headline
from visiontrain.engine.resume import read_resume, restore, stream_fingerprint
from visiontrain.engine.state import TrainState
from visiontrain.engine.timing import TimeTotals
from visiontrain.errors import CheckpointError, VisiontrainError
from visiontrain.fileio import atomic_write_json, remove_stale_temps
from visiontrain.models import count_parameters
from visiontrain.text import printable, slug
from visiontrain.trainer.folders import as_config, clear_for_restart, make_run_dir, saved_config, start_run_dir
from visiontrain.trainer.summary import Run, summarize, write_samples
from visiontrain.trainer.wiring import build_callbacks, build_state, check_trackers
from visiontrain.use.evaluate import evaluate
from visiontrain.use.report import write_report
from visiontrain.watch.tracking import Tracking

__all__ = ["Run", "as_config", "find_lr", "make_run_dir", "saved_config", "train"]


def train(config: RunConfig | dict | str | Path | None = None, *, resume: str | Path | None = None,
          callbacks: list[Callback] | None = None, quiet: bool = False, overwrite: bool = False,
          trust_code: bool = False) -> Run:
    """Train a model, or continue a stopped run with ``resume=<run folder>``; returns the :class:`Run`.

    ``callbacks`` are yours (:class:`~visiontrain.engine.callbacks.Callback`): each sees every event in the phase
    its ``order`` names, by default after the built-in ones have measured, judged and logged it and before the
    resume point is written.

    A config read from a run's files (``resume`` without ``config``, or a YAML path inside a run folder) may not
    name code to import or a file to unpickle unless ``trust_code`` (see :mod:`visiontrain.config.trust`).

    An existing run folder of the same name is never touched (the new one gets a -2, -3 … suffix) unless
    ``overwrite``: then it is replaced once the new run has started (see :func:`set_aside`).

    >>> run = visiontrain.train({"data": "synthetic", "epochs": 1, "out": "/tmp/vt-doc"})  # doctest: +SKIP
    >>> run.summary["best"]["accuracy"] > 0.5  # doctest: +SKIP
    True
    """
    started = time.perf_counter()
    extra = Callbacks(callbacks or []).items  # an unknown ``order`` is an error before anything is built
    cfg = (as_config(config, trust_code=trust_code) if config is not None or resume is None
           else saved_config(resume, trust_code=trust_code))
    check_trackers(cfg)
    state, data, built = build_state(cfg)
    cfg, d = state.config, state.dist  # (under torchrun: the global batch and lr this job runs with)
    trackers: list[Tracking] = []
    try:
        if resume is None:
            if d.main:  # one process owns the run folder; the others learn its name
                state.run_dir = start_run_dir(cfg, overwrite)
            state.run_dir = Path(distributed.broadcast_text(str(state.run_dir), d, state.device))
        else:
            state.run_dir = Path(resume)
        chain = build_callbacks(state, data, built, extra, quiet or not d.main, started)
        trackers = [cb for cb in chain.items if isinstance(cb, Tracking)]
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
            if trackers:
                summary["tracking"] = {cb.tracker.name: cb.tracker.describe() for cb in trackers}
            atomic_write_json(state.run_dir / "summary.json", summary)
            if trackers:
                _finish_tracking(state, trackers)
    finally:
        for cb in trackers:  # still open only when something failed after the fit: the tracker run failed
            cb.end("FAILED")
        distributed.teardown(d)
    return Run(state.run_dir, cfg, summary)


def find_lr(config: RunConfig | dict | str | Path | None = None, *, steps: int = 100, start_lr: float = 1e-6,
            end_lr: float = 1.0, out: str | Path | None = None, trust_code: bool = False) -> dict[str, Any]:
    """The learning-rate range test on a throwaway copy of the configured model and data.

    Writes ``lr_find.png``, ``lr_find.json`` and TensorBoard scalars into ``out`` (default
    ``<runs>/lr-find-<data>-<model>-<time>``) and returns ``{"lrs", "losses", "suggestion", "folder"}``.
    """
    from visiontrain.watch import plots  # matplotlib: loaded when a picture is drawn

    check_sweep(steps, start_lr, end_lr)
    cfg = as_config(config, trust_code=trust_code)
    state, data, _ = build_state(cfg)
    result = lr_range_test(state, data.loaders["train"], start_lr, end_lr, steps)
    name = f"lr-find-{slug(cfg.data.name)}-{slug(cfg.model.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
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


def _finish_tracking(state: TrainState, trackers: list[Tracking]) -> None:
    """The evaluation report of the best checkpoint (``<run>/report/``; mostly pictures, so none with ``--plots
    off``), then every tracker gets the files."""
    run = state.run_dir
    best = run / "checkpoints" / "best.json"
    if best.is_file() and state.config.train.plots:
        try:
            result = evaluate(best, device=str(state.device), mistakes=32, outputs=True)
            write_report(result, run / "report")
        except VisiontrainError as exc:  # the run is trained and saved; the report is extra
            print(f"note: no evaluation report for the tracker ({exc})", file=sys.stderr, flush=True)
    files = {"": [run / "config.yaml", run / "summary.json", run / "results.csv"],
             "checkpoints": [best, best.with_suffix(".safetensors")],
             "plots": sorted((run / "plots").glob("*.png")),
             "report": sorted(p for p in (run / "report").glob("*") if p.is_file())}
    for cb in trackers:
        cb.finish(files)


def _resume(state: TrainState, data: DataBundle, chain: Callbacks) -> None:
    """Load the run's resume point and prove the data stream is the one it was trained on; a run stopped
    before its first resume point starts again from the beginning (:func:`.folders.clear_for_restart`)."""
    path = state.run_dir / "checkpoints" / "resume.safetensors"
    if not path.exists():
        clear_for_restart(state.run_dir, main=state.dist.main)
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


def _test_best(state: TrainState, data: DataBundle) -> dict[str, Any]:
    """Test-split metrics of the best checkpoint, read back from disk (proving the file round-trips)."""
    sidecar = state.run_dir / "checkpoints" / "best.json"
    load_into(state.raw_model, load_weights(sidecar, read_sidecar(sidecar)), sidecar)
    full = evaluate_batches(state.raw_model, data.loaders["test"], state.prepare, state.device, len(state.classes),
                            task=state.task, reduce=state.dist.reducer(), gather=state.dist.gatherer(),
                            thresholds=read_sidecar(sidecar).get("thresholds"))
    return {**headline(full), "epoch": state.best["epoch"] if state.best else None, "checkpoint": "best"}


def _precision_note(state: TrainState) -> str:
    mode = state.precision.mode
    return "" if mode == "32" else f" in {mode} mixed precision"


def _threads_note(state: TrainState) -> str:
    count, _, why = state.threads.partition(" ")
    return f"{count} CPU thread{'' if count == '1' else 's'}{' ' + why if why else ''}"


def _print_header(cfg: RunConfig, data: DataBundle, state: TrainState) -> None:
    counts = ", ".join(f"{len(v):,} {k}" for k, v in data.source.splits.items())
    p = data.prep
    print(f"visiontrain: {cfg.model.name} ({count_parameters(state.model):,} parameters) on {cfg.data.name} "
          f"[{counts}; {len(data.classes)} classes, {p.channels}x{p.size}x{p.size}], "
          f"{cfg.train.epochs} epochs on {state.device}{_precision_note(state)}, {_threads_note(state)}",
          file=sys.stderr, flush=True)

    for note in data.source.notes:
        print(f"note: {printable(note)}", file=sys.stderr, flush=True)
    for line in start_lines(data.source, cfg.data.name):  # duplicates and train/val leakage, as `data info` finds
        print(printable(line), file=sys.stderr, flush=True)
    if state.monitor.last:
        held = f"the {state.eval_split} split is only reported" if state.eval_split else "nothing is evaluated"
        print(f"note: no validation split: the last epoch is kept as the result (no best-epoch selection; {held}); "
              "--val-split 0.1 holds one out of train", file=sys.stderr, flush=True)
    watched = "last epoch" if state.monitor.last else state.monitor.key
    print(f"run folder: {state.run_dir} (monitor: {watched})", file=sys.stderr, flush=True)
