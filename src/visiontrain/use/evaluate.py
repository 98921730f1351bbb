"""``visiontrain.evaluate``: loss, top-1/top-5, per-class accuracy and the confusion matrix of a split."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visiontrain.config import DataConfig, load_config
from visiontrain.config.trust import check_file_values
from visiontrain.data import build_data
from visiontrain.engine.metrics import evaluate_batches
from visiontrain.errors import DataError
from visiontrain.models.checks import check_batch_memory
from visiontrain.use.explain import gradcam
from visiontrain.use.loading import LoadedModel, load
from visiontrain.use.tta import TTAModel, check_multilabel_views, check_tta


def evaluate(model: LoadedModel | str | Path, data: str | None = None, split: str | None = None, *,
             data_dir: str | None = None, batch_size: int | None = None, device: str = "auto",
             workers: int | None = None, tta: str = "none", mistakes: int = 0,
             outputs: bool = False, trust_code: bool = False, model_spec: str | None = None,
             explain_mistakes: bool = False) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of its own dataset (or of ``data``, with the same classes).

    A dataset the checkpoint names as ``module:Class`` is not imported from its sidecar unless ``trust_code`` or
    ``data`` names it (see :mod:`visiontrain.config.trust`): a file never decides what code runs; nor is a model
    class, unless ``trust_code`` or ``model_spec`` names it.

    ``split=None`` is the held-out split training reported on: test when the data has one, else val (held out
    of train the same way, from the run's seed); ``result["split"]`` says which.

    ``tta`` averages the probabilities of flipped or five-cropped views (see :mod:`visiontrain.use.tta`);
    ``mistakes=k`` adds the k most confident wrong predictions (``explain_mistakes``: with each one's Grad-CAM
    map for the predicted class, ``result["mistakes"]["heat"]``, see :mod:`visiontrain.use.explain`);
    ``outputs=True`` adds every image's
    ``probabilities`` [N, K] and ``targets`` [N] as tensors (what :mod:`~visiontrain.use.report` needs) — for a
    regression model, ``predictions`` [N] and ``targets`` [N] (it is scored by ``mse``, ``mae``, ``rmse``). A
    multi-label model is scored by mAP (``map``, ``map_micro``, ``ap_per_label``) and, at the thresholds saved in
    its checkpoint, precision, recall, F1, ``exact_match`` and ``hamming_loss``; its ``probabilities`` are
    sigmoid scores and its ``targets`` multi-hot rows [N, K].

    >>> import visiontrain
    >>> r = visiontrain.evaluate("runs/demo", split="test")
    >>> r["count"], r["accuracy"] > 0.9, len(r["confusion"])
    (100, True, 4)
    """
    check_tta(tta)  # before any loading: a typo should cost nothing
    loaded = model if isinstance(model, LoadedModel) else load(model, device=device, trust_code=trust_code,
                                                               model_spec=model_spec)
    cfg = _data_config(loaded, data, data_dir, batch_size, workers, trust_code)
    seed = int(loaded.meta.get("config", {}).get("train", {}).get("seed", 0))
    bundle = build_data(cfg, seed, prep=loaded.prep, splits=(split or "test",))
    if split is None:  # no test split: the val split the run held out (rebuilt only when needed)
        split = "test" if "test" in bundle.loaders else "val"
        if split == "val":
            bundle = build_data(cfg, seed, prep=loaded.prep, splits=(split,))
    if split not in bundle.loaders:
        raise DataError(f"dataset {cfg.name!r} has no {split!r} split; it has: "
                        f"{', '.join(bundle.source.splits)} (choose one with --split)")
    batch = min(cfg.eval_batch_size, len(bundle.source.splits[split]))
    check_batch_memory(loaded.meta, loaded.prep, batch, loaded.device, loaded.path)
    unknown = [c for c in bundle.classes if c not in loaded.classes]
    if unknown:
        raise DataError(f"dataset {cfg.name!r} has classes the model was not trained on ({', '.join(unknown[:5])}); "
                        f"the model knows {', '.join(loaded.classes[:10])} — evaluate on data with those classes")
    batches = bundle.loaders[split]
    task = str(loaded.meta.get("task", "classification"))
    if task == "regression":
        recorder = _Recorder(loaded.model, task) if outputs else loaded.model
        if outputs:
            batches = recorder.tee(batches)
        result = evaluate_batches(recorder, batches, loaded.prep.normalizer(), loaded.device, 1, task=task)
        if outputs:
            result.update(recorder.tensors())
        return {"checkpoint": str(loaded.path), "data": cfg.name, "split": split, "task": task,
                "classes": loaded.classes, "tta": "none", **result}
    if task == "multilabel":
        check_multilabel_views(tta, loaded.prep.crops > 1)
        return _evaluate_multilabel(loaded, bundle.classes, batches, outputs,
                                    {"checkpoint": str(loaded.path), "data": cfg.name, "split": split})
    if bundle.classes != loaded.classes:
        # Match labels by class name, not position: a folder tree lists its classes alphabetically
        # (synthetic's are not) and may hold only some of the model's classes.
        remap = torch.tensor([loaded.classes.index(c) for c in bundle.classes])
        batches = ((images, remap[labels]) for images, labels in batches)
    net = TTAModel(loaded.model, tta) if tta != "none" or loaded.prep.crops > 1 else loaded.model
    recorder = _Recorder(net) if outputs else net
    if outputs:
        batches = recorder.tee(batches)
    result = evaluate_batches(recorder, batches, loaded.prep.normalizer(), loaded.device, len(loaded.classes),
                              mistakes=mistakes)
    if outputs:
        result.update(recorder.tensors())
    found = result.get("mistakes")
    if explain_mistakes and found and found["true"]:
        images = found["images"][:, 0] if found["images"].dim() == 5 else found["images"]  # multi-crop: the first
        found["heat"] = gradcam(loaded, images, found["pred"])
    return {"checkpoint": str(loaded.path), "data": cfg.name, "split": split, "task": task,
            "classes": loaded.classes, "tta": tta, **result}


def _evaluate_multilabel(loaded: LoadedModel, classes: list[str], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         outputs: bool, head: dict[str, Any]) -> dict[str, Any]:
    if classes != loaded.classes:  # the data's label columns, moved to the model's (a label it lacks: all 0)
        columns = torch.tensor([loaded.classes.index(c) for c in classes])
        width = len(loaded.classes)

        def widen(labels: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(len(labels), width, dtype=labels.dtype)
            out[:, columns] = labels
            return out

        batches = ((images, widen(labels)) for images, labels in batches)
    recorder = _Recorder(loaded.model, "multilabel") if outputs else loaded.model
    if outputs:
        batches = recorder.tee(batches)
    result = evaluate_batches(recorder, batches, loaded.prep.normalizer(), loaded.device, len(loaded.classes),
                              task="multilabel", thresholds=loaded.meta.get("thresholds"))
    result.pop("tuned_thresholds", None)  # tuned on the split being scored: not the model's
    result.pop("scores", None), result.pop("targets", None)  # (outputs=True gives them as probabilities, targets)
    if outputs:
        result.update(recorder.tensors())
    return {**head, "task": "multilabel", "classes": loaded.classes, "tta": "none", **result}


class _Recorder(nn.Module):
    """Passes through ``model`` and keeps each batch's probabilities (for regression: predicted values) and
    targets, in order, on the CPU."""

    def __init__(self, model: nn.Module, task: str = "classification") -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.probabilities: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.task == "regression":
            self.probabilities.append(logits.detach().float().reshape(len(logits)).cpu())
        elif self.task == "multilabel":
            self.probabilities.append(torch.sigmoid(logits.float()).cpu())
        else:
            self.probabilities.append(torch.softmax(logits.float(), dim=1).cpu())
        return logits

    def tee(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in batches:
            self.targets.append(labels.cpu())
            yield images, labels

    def tensors(self) -> dict[str, torch.Tensor]:
        key = "predictions" if self.task == "regression" else "probabilities"
        return {key: torch.cat(self.probabilities), "targets": torch.cat(self.targets)}


def _data_config(loaded: LoadedModel, data: str | None, data_dir: str | None, batch_size: int | None,
                 workers: int | None, trust_code: bool) -> DataConfig:
    saved = (loaded.meta.get("config") or {}).get("data", {})
    if isinstance(saved, dict) and saved:  # the sidecar's, not the user's: it may not name code
        check_file_values({"data": saved}, loaded.path, trust_code=trust_code, prefix="config.",
                          given=["data.name"] if data is not None else [])
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


def saved_data_config(loaded: LoadedModel, *, trust_code: bool = False) -> DataConfig:
    """The data a checkpoint was trained on, as its sidecar records it (checked like evaluate's own: a sidecar
    never names code); what export calibrates an int8 model on."""
    return _data_config(loaded, None, None, None, None, trust_code)
