"""``visiontrain.evaluate``: loss, top-1/top-5, per-class accuracy and the confusion matrix of a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visiontrain.config import DataConfig, load_config
from visiontrain.data import build_data
from visiontrain.engine.metrics import evaluate_batches
from visiontrain.errors import DataError
from visiontrain.use.loading import LoadedModel, load


def evaluate(model: LoadedModel | str | Path, data: str | None = None, split: str = "test", *,
             data_dir: str | None = None, batch_size: int | None = None, device: str = "auto",
             workers: int | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of its own dataset (or of ``data``, with the same classes).

    >>> r = visiontrain.evaluate("runs/mnist-demo", split="test")  # doctest: +SKIP
    >>> round(r["accuracy"], 3), len(r["confusion"])  # doctest: +SKIP
    (0.991, 10)
    """
    loaded = model if isinstance(model, LoadedModel) else load(model, device=device)
    cfg = _data_config(loaded, data, data_dir, batch_size, workers)
    seed = int(loaded.meta.get("config", {}).get("train", {}).get("seed", 0))
    bundle = build_data(cfg, seed, prep=loaded.prep, splits=(split,))
    if split not in bundle.loaders:
        raise DataError(f"dataset {cfg.name!r} has no {split!r} split; it has: "
                        f"{', '.join(bundle.source.splits)} (choose one with --split)")
    if bundle.classes != loaded.classes:
        raise DataError(f"dataset {cfg.name!r} has classes {bundle.classes[:10]} but the model was trained on "
                        f"{loaded.classes[:10]}; evaluate on data with the same class folders")
    result = evaluate_batches(loaded.model, bundle.loaders[split], loaded.prep.normalizer(), loaded.device,
                              len(loaded.classes))
    return {"checkpoint": str(loaded.path), "data": cfg.name, "split": split, "classes": loaded.classes, **result}


def _data_config(loaded: LoadedModel, data: str | None, data_dir: str | None, batch_size: int | None,
                 workers: int | None) -> DataConfig:
    saved = loaded.meta.get("config", {}).get("data", {})
    base = load_config({"data": saved}).data if isinstance(saved, dict) and saved else DataConfig()
    overrides: dict[str, Any] = {"name": data or base.name}
    if data is not None and data != base.name:
        overrides["args"] = {}
    if data_dir is not None:
        overrides["dir"] = data_dir
    if batch_size is not None:
        overrides["eval_batch_size"] = batch_size
    if workers is not None:
        overrides["workers"] = workers
    merged = {**base.__dict__, **overrides}
    return load_config({"data": merged}).data
