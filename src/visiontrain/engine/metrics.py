"""Metrics summed over a whole split — never averaged per batch — for classification and regression.

The notes' (docs/cookbook.md §6) ``total_accuracy = (outputs.argmax(1) == targets).sum()`` overwrites instead
of adding, and averaging per-batch accuracies weights a short last batch like a full one. Here every count is a sum of
per-sample results, kept on the device until :meth:`compute`, so the figures are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


class ClassificationMeter:
    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.top5_correct = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """``loss_sum`` is the loss summed (not averaged) over the batch."""
        preds = logits.argmax(dim=1)
        k = self.num_classes
        self.confusion += torch.bincount(targets * k + preds, minlength=k * k).view(k, k)
        self.loss_sum += loss_sum.detach().double()
        topk = logits.topk(min(5, k), dim=1).indices
        self.top5_correct += (topk == targets.unsqueeze(1)).any(dim=1).sum()

    def compute(self) -> dict:
        """loss, accuracy, top5 (fractions), per-class accuracy, confusion (rows = truth), count."""
        confusion = self.confusion.cpu()
        total = int(confusion.sum())
        if total == 0:
            raise ValueError("no samples were evaluated")
        support = confusion.sum(dim=1)
        correct = confusion.diag()
        per_class = [float(c) / float(s) if s else float("nan") for c, s in zip(correct, support, strict=True)]
        return {
            "loss": float(self.loss_sum) / total,
            "accuracy": float(correct.sum()) / total,
            "top5": float(self.top5_correct) / total,
            "count": total,
            "per_class_accuracy": per_class,
            "confusion": confusion.tolist(),
        }


class RegressionMeter:
    """Sums of squared and absolute errors of one-output models: loss (= MSE), MAE, RMSE."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sq_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.abs_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor | None = None) -> None:
        error = outputs.detach().double().reshape(len(targets)) - targets.double()
        self.sq_sum += (error * error).sum()
        self.abs_sum += error.abs().sum()
        self.count += len(targets)

    def compute(self) -> dict:
        count = int(self.count)
        if count == 0:
            raise ValueError("no samples were evaluated")
        mse = float(self.sq_sum) / count
        return {"loss": mse, "mse": mse, "mae": float(self.abs_sum) / count, "rmse": mse**0.5, "count": count}


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     prepare: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                     num_classes: int, mistakes: int = 0, task: str = "classification",
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Evaluate ``model`` in eval mode over all batches; restores the model's previous mode.

    With ``mistakes=k`` the result also holds the k most confident wrong predictions
    (``result["mistakes"]``: uint8 images, true and predicted indices, confidences).
    A ``regression`` model is scored by MSE (its ``loss``), MAE and RMSE instead. ``reduce`` sums the
    counts over processes when each evaluates its shard of the split (the figures stay exact).
    """
    if task == "regression":
        return _evaluate_regression(model, batches, prepare, device, reduce)
    was_training = model.training
    model.eval()
    meter = ClassificationMeter(num_classes, device)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    worst = _Mistakes(mistakes)
    try:
        for images, labels in batches:
            if len(labels) == 0:  # a process's share of a tiny last batch
                continue
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            logits = model(prepare(images))
            meter.update(logits, labels, loss_fn(logits.float(), labels))
            worst.add(images, labels, logits)
    finally:
        model.train(was_training)
    if reduce is not None:
        for t in (meter.confusion, meter.loss_sum, meter.top5_correct):
            reduce(t)
    result = meter.compute()
    if mistakes:
        result["mistakes"] = worst.result()
    return result


def _evaluate_regression(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         prepare: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                         reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> dict:
    was_training = model.training
    model.eval()
    meter = RegressionMeter(device)
    try:
        for images, targets in batches:
            if len(targets) == 0:
                continue
            outputs = model(prepare(images.to(device, non_blocking=True)))
            meter.update(outputs, targets.to(device, non_blocking=True))
    finally:
        model.train(was_training)
    if reduce is not None:
        for t in (meter.sq_sum, meter.abs_sum, meter.count):
            reduce(t)
    return meter.compute()


class _Mistakes:
    """Keeps the k most confident wrong predictions seen so far (a running top-k, merged per batch)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.items: list[tuple[float, torch.Tensor, int, int]] = []

    def add(self, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> None:
        if not self.k:
            return
        confidence, preds = torch.softmax(logits.float(), dim=1).max(dim=1)
        wrong = torch.nonzero(preds != labels).flatten()
        if len(wrong) == 0:
            return
        top = wrong[confidence[wrong].argsort(descending=True)[: self.k]].tolist()
        self.items += [(float(confidence[i]), images[i].cpu(), int(labels[i]), int(preds[i])) for i in top]
        self.items = sorted(self.items, key=lambda t: -t[0])[: self.k]

    def result(self) -> dict:
        return {"images": torch.stack([t[1] for t in self.items]) if self.items else torch.empty(0),
                "true": [t[2] for t in self.items], "pred": [t[3] for t in self.items],
                "confidence": [t[0] for t in self.items]}


def headline(metrics: dict) -> dict[str, float]:
    """The scalar part of a metrics dict (what summaries and logs show)."""
    return {k: metrics[k] for k in HEADLINE if k in metrics}


HEADLINE = ("accuracy", "loss", "top5", "mae", "rmse")


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Only the plain numbers of an epoch's metrics (no confusion matrices, no private keys)."""
    return {k: v for k, v in metrics.items() if not k.startswith("_") and "/_" not in k
            and isinstance(v, int | float)}
