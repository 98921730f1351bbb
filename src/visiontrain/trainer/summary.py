"""A run folder and what it holds: the :class:`Run` handle, ``summary.json``, sample images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiontrain.config import RunConfig
from visiontrain.data import DataBundle
from visiontrain.data.types import FileSplit, TensorSplit
from visiontrain.engine.metrics import HEADLINE
from visiontrain.engine.state import TrainState
from visiontrain.errors import VisiontrainError
from visiontrain.fileio import atomic_write_bytes
from visiontrain.models import count_parameters
from visiontrain.text import slug
from visiontrain.use.loading import LoadedModel, load
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

    def load(self, which: str = "best", *, trust_code: bool = False, model_spec: str | None = None) -> LoadedModel:
        return load(self.dir / "checkpoints" / f"{which}.json", trust_code=trust_code, model_spec=model_spec)


def summarize(state: TrainState, data: DataBundle, wall_time: float) -> dict[str, Any]:
    split = state.monitor_split
    m = state.epoch_metrics
    final = {k: m[f"{split}/{k}"] for k in HEADLINE if f"{split}/{k}" in m}
    if not final:
        final = {k: m[f"train/{k}"] for k in HEADLINE if f"train/{k}" in m}
    ema = {k.split("/", 1)[1]: v for k, v in m.items() if "_ema/" in k}
    return {
        "run_dir": str(state.run_dir),
        "epochs_completed": state.epoch,
        "steps": state.step,
        "stopped_early": bool(state.stop_reason),
        "stop_reason": state.stop_reason,
        "resumed_from": state.resumed_from,
        "monitor_split": split,
        "final": final,
        **({"final_ema": ema} if ema else {}),
        "best": state.best,
        "train": {k.removeprefix("train/"): v for k, v in m.items() if k.startswith("train/")},
        "wall_time_s": round(wall_time, 3),
        "device": str(state.device),
        "threads": state.threads,
        "precision": state.precision.mode,  # what ran: `auto` resolved (engine/precision.py)
        "model": {"name": state.config.model.name, "parameters": count_parameters(state.model)},
        "data": {"name": state.config.data.name, "classes": state.classes,
                 "counts": {k: len(v) for k, v in data.source.splits.items()}},
        "versions": library_versions(),
    }


def write_samples(data: DataBundle, folder: Path, count: int = 4) -> None:
    """A few held-out images as files, so the closing `visiontrain predict` line works as printed."""
    from PIL import Image

    split_name = next((s for s in ("test", "val") if s in data.source.splits), "train")
    split = data.source.splits[split_name]
    folder.mkdir(exist_ok=True)
    if not isinstance(split, TensorSplit | FileSplit):  # a user Dataset's items have no files to show
        return
    for i in range(min(count, len(split))):
        value = split.labels[i]
        if value.dim() == 1:  # multi-label: the labels it has, joined
            name = "+".join(data.classes[j] for j in value.nonzero().flatten().tolist()) or "none"
        else:
            name = f"{float(value):.4g}" if value.is_floating_point() else data.classes[int(value)]
        label = slug(name, "x", last_part=False)
        target = folder / f"{split_name}_{i}_{label}.png"
        if isinstance(split, TensorSplit):
            array = split.images[i].permute(1, 2, 0).squeeze(-1).cpu().numpy()
            Image.fromarray(array).save(target)
        else:
            try:
                target = target.with_suffix(split.paths[i].suffix.lower())
                atomic_write_bytes(target, split.paths[i].read_bytes())
            except (OSError, VisiontrainError):
                continue
