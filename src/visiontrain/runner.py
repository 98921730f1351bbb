"""``visiontrain.train``: config → data → model → fit → checkpoints, event files and summary.json."""

from __future__ import annotations

import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visiontrain.config import RunConfig, load_config, read_yaml
from visiontrain.data import build_data
from visiontrain.data.sources import TensorSplit
from visiontrain.engine.callbacks import Callback, Callbacks
from visiontrain.engine.checkpoint import load_into, load_weights, read_sidecar
from visiontrain.engine.loop import fit, state_prepare
from visiontrain.engine.metrics import evaluate_batches, headline
from visiontrain.engine.optim import build_optimizer, build_schedule
from visiontrain.engine.saver import CheckpointSaver
from visiontrain.engine.state import TrainState
from visiontrain.errors import ConfigError, VisiontrainError
from visiontrain.fileio import atomic_write_bytes, atomic_write_json, atomic_write_yaml
from visiontrain.logging.console import ConsoleLogger
from visiontrain.logging.files import MetricsFile
from visiontrain.logging.tensorboard import TensorBoardLogger
from visiontrain.models import ModelInput, count_parameters, create_model, get_entry
from visiontrain.versions import library_versions


@dataclass
class Run:
    """A finished (or stopped) run: its folder, config and summary."""

    dir: Path
    config: RunConfig
    summary: dict[str, Any]

    @property
    def best_checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "best.json"

    @property
    def last_checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "last.json"

    def load(self, which: str = "best"):
        from visiontrain.use.loading import load

        return load(self.dir / "checkpoints" / f"{which}.json")


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda, then mps, then cpu; explicit names are checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} asked for but MPS is not available here; use --device cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def as_config(config: RunConfig | dict | str | Path | None) -> RunConfig:
    if config is None:
        return RunConfig()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, str | Path):
        return load_config(read_yaml(config), where=str(config))
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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", Path(text).name or text).strip("_") or "run"


def train(config: RunConfig | dict | str | Path | None = None, *, callbacks: list[Callback] | None = None,
          quiet: bool = False) -> Run:
    """Train a model; returns the :class:`Run` with its folder and summary.

    >>> run = visiontrain.train({"data": "synthetic", "epochs": 1, "out": "/tmp/vt-doc"})  # doctest: +SKIP
    >>> run.summary["best"]["accuracy"] > 0.5  # doctest: +SKIP
    True
    """
    cfg = as_config(config)
    started = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    entry = get_entry(cfg.model.name)
    data = build_data(cfg.data, cfg.train.seed, channels=entry.channels, size=entry.default_size,
                      pin_memory=device.type == "cuda")
    prep = data.prep
    model = create_model(cfg.model.name, ModelInput(prep.channels, prep.size, len(data.classes)), cfg.model.args)
    model = model.to(device, memory_format=torch.channels_last if device.type != "mps" else torch.contiguous_format)
    optimizer = build_optimizer(model, cfg.optim)
    steps = len(data.loaders["train"])
    scheduler = build_schedule(optimizer, cfg.optim, steps, cfg.train.epochs)
    run_dir = make_run_dir(cfg)
    atomic_write_yaml(run_dir / "config.yaml", cfg.to_dict())
    state = TrainState(cfg, model, optimizer, scheduler, nn.CrossEntropyLoss(), device, prep, data.classes,
                       run_dir, steps)
    console = ConsoleLogger(progress=False if quiet else None)
    if not quiet:
        _print_header(cfg, data, model, device, run_dir)
    chain = Callbacks([*([] if quiet else [console]), MetricsFile(run_dir / "metrics.jsonl"),
                       TensorBoardLogger(run_dir), CheckpointSaver(run_dir / "checkpoints"), *(callbacks or [])])
    fit(state, data.loaders, chain)
    _write_samples(data, run_dir / "samples")
    summary = _summarize(state, data, started)
    if "test" in data.loaders and state.best is not None:
        summary["test"] = _test_best(state, data)
    atomic_write_json(run_dir / "summary.json", summary)
    return Run(run_dir, cfg, summary)


def _write_samples(data, folder: Path, count: int = 4) -> None:
    """A few held-out images as files, so the closing `visiontrain predict` line works as printed."""
    from PIL import Image

    split_name = next((s for s in ("test", "val") if s in data.source.splits), "train")
    split = data.source.splits[split_name]
    folder.mkdir(exist_ok=True)
    for i in range(min(count, len(split))):
        label = _slug(data.classes[int(split.labels[i])])
        target = folder / f"{split_name}_{i}_{label}.png"
        if isinstance(split, TensorSplit):
            array = split.images[i].permute(1, 2, 0).squeeze(-1).numpy()
            Image.fromarray(array).save(target)
        else:
            try:
                target = target.with_suffix(split.paths[i].suffix.lower())
                atomic_write_bytes(target, split.paths[i].read_bytes())
            except (OSError, VisiontrainError):
                continue


def _test_best(state: TrainState, data) -> dict[str, Any]:
    """Test-split metrics of the best checkpoint, read back from disk (proving the file round-trips)."""
    sidecar = state.run_dir / "checkpoints" / "best.json"
    load_into(state.model, load_weights(sidecar, read_sidecar(sidecar)), sidecar)
    full = evaluate_batches(state.model, data.loaders["test"], state_prepare(state, state.prep.normalizer()),
                            state.device, len(state.classes))
    return {**headline(full), "epoch": state.best["epoch"] if state.best else None, "checkpoint": "best"}


def _summarize(state: TrainState, data, started: float) -> dict[str, Any]:
    split = state.monitor_split
    m = state.epoch_metrics
    final = {k: m.get(f"{split}/{k}") for k in ("accuracy", "loss", "top5") if f"{split}/{k}" in m}
    if not final:
        final = {"accuracy": m.get("train/accuracy"), "loss": m.get("train/loss")}
    return {
        "run_dir": str(state.run_dir),
        "epochs_completed": state.epoch,
        "steps": state.step,
        "stopped_early": bool(state.stop_reason),
        "stop_reason": state.stop_reason,
        "monitor_split": split,
        "final": final,
        "best": state.best,
        "train": {k.removeprefix("train/"): v for k, v in m.items() if k.startswith("train/")},
        "wall_time_s": round(time.perf_counter() - started, 3),
        "device": str(state.device),
        "model": {"name": state.config.model.name, "parameters": count_parameters(state.model)},
        "data": {"name": state.config.data.name, "classes": state.classes,
                 "counts": {k: len(v) for k, v in data.source.splits.items()}},
        "versions": library_versions(),
    }


def _print_header(cfg: RunConfig, data, model: nn.Module, device: torch.device, run_dir: Path) -> None:
    counts = ", ".join(f"{len(v):,} {k}" for k, v in data.source.splits.items())
    print(f"visiontrain: {cfg.model.name} ({count_parameters(model):,} parameters) on {cfg.data.name} "
          f"[{counts}; {len(data.classes)} classes, {data.prep.channels}x{data.prep.size}x{data.prep.size}], "
          f"{cfg.train.epochs} epochs on {device}", file=sys.stderr, flush=True)
    for note in data.source.notes:
        print(f"note: {note}", file=sys.stderr, flush=True)
    print(f"run folder: {run_dir}", file=sys.stderr, flush=True)
