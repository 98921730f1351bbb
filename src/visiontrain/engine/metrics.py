"""Metrics summed over a whole split — never averaged per batch — for classification, regression and multi-label
(scored over every image's scores at once: average precision needs them all).

The notes' (docs/cookbook.md §6) ``total_accuracy = (outputs.argmax(1) == targets).sum()`` overwrites instead
of adding, and averaging per-batch accuracies weights a short last batch like a full one. Here every count is a sum of
per-sample results, kept on the device until :meth:`compute`, so the figures are exact.
"""

from __future__ import annotations

import warnings
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
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     thresholds: list[float] | None = None, tune: str = "per_label") -> dict:
    """Evaluate ``model`` in eval mode over all batches; restores the model's previous mode.

    With ``mistakes=k`` the result also holds the k most confident wrong predictions
    (``result["mistakes"]``: uint8 images, true and predicted indices, confidences).
    A ``regression`` model is scored by MSE (its ``loss``), MAE and RMSE instead. ``reduce`` sums the
    counts over processes when each evaluates its shard of the split (the figures stay exact).

    A ``multilabel`` model is scored by :class:`MultilabelMeter` at ``thresholds`` (default 0.5 for every label);
    ``gather`` concatenates every process's scores; the thresholds tuned on this split (``tune``) come back as
    ``result["tuned_thresholds"]``.
    """
    if task == "regression":
        return _evaluate_regression(model, batches, prepare, device, reduce)
    if task == "multilabel":
        return _evaluate_multilabel(model, batches, prepare, device, num_classes, gather, thresholds, tune)
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


def _feed(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
          prepare: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
          update: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    """The model in eval mode over every non-empty batch; its outputs and the targets go to ``update``."""
    was_training = model.training
    model.eval()
    try:
        for images, targets in batches:
            if len(targets) == 0:
                continue
            update(model(prepare(images.to(device, non_blocking=True))), targets.to(device, non_blocking=True))
    finally:
        model.train(was_training)


def _evaluate_regression(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         prepare: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                         reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> dict:
    meter = RegressionMeter(device)
    _feed(model, batches, prepare, device, meter.update)
    if reduce is not None:
        for t in (meter.sq_sum, meter.abs_sum, meter.count):
            reduce(t)
    return meter.compute()


class MultilabelMeter:
    """Every image's sigmoid scores and multi-hot targets, then (torchmetrics) mAP macro and micro, AP per
    label, precision/recall/F1 at the decision thresholds, the exact-match ratio and the Hamming loss; and the
    thresholds that maximize F1 on these very images (per label, or one global), for the checkpoint."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.scores.append(torch.sigmoid(logits.detach().float()))
        self.targets.append(targets.detach().float())

    def tensors(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
        empty = torch.empty(0, self.num_labels)
        scores = torch.cat(self.scores) if self.scores else empty
        targets = torch.cat(self.targets) if self.targets else empty
        if gather is not None:
            scores, targets = gather(scores), gather(targets)
        return scores.cpu(), targets.cpu()

    def compute(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                thresholds: list[float] | None = None, tune: str = "per_label") -> dict:
        scores, targets = self.tensors(gather)
        if len(scores) == 0:
            raise ValueError("no samples were evaluated")
        result = multilabel_scores(scores, targets, thresholds)
        result["tuned_thresholds"] = tune_thresholds(scores, targets, tune)
        result["scores"], result["targets"] = scores, targets  # for the pictures (watch/pictures.py)
        return result


def multilabel_scores(scores: torch.Tensor, targets: torch.Tensor, thresholds: list[float] | None = None) -> dict:
    """The multi-label metrics of sigmoid ``scores`` [N, K] against multi-hot ``targets`` [N, K].

    A label no image has gets AP NaN and is left out of the macro mean (its AP is not defined).

    >>> s = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4]])
    >>> t = torch.tensor([[1., 0.], [0., 1.], [1., 0.]])
    >>> r = multilabel_scores(s, t)
    >>> round(r["map"], 4), r["ap_per_label"], round(r["exact_match"], 4), round(r["hamming_loss"], 4)
    (0.9167, [0.8333, 1.0], 0.3333, 0.3333)
    """
    from torchmetrics.functional.classification import (
        multilabel_average_precision,
        multilabel_exact_match,
        multilabel_f1_score,
        multilabel_hamming_distance,
        multilabel_precision,
        multilabel_recall,
    )

    k = scores.shape[1]
    target = targets.round().int()
    cut = torch.tensor(thresholds if thresholds is not None else [0.5] * k, dtype=torch.float32)
    decided = (scores >= cut).float()  # torchmetrics takes one threshold: decide here, at each label's own
    present = target.sum(dim=0) > 0
    with warnings.catch_warnings():  # "no positive samples": such a label's AP is set to NaN just below
        warnings.simplefilter("ignore", UserWarning)
        per_label = multilabel_average_precision(scores, target, num_labels=k, average="none")
    per_label = torch.where(present, per_label, torch.nan)
    loss = torch.nn.functional.binary_cross_entropy(scores.clamp(1e-7, 1 - 1e-7), targets.float())
    common = {"preds": decided, "target": target, "num_labels": k, "threshold": 0.5}
    return {
        "loss": float(loss),
        "map": float(per_label[present].mean()) if present.any() else float("nan"),
        "map_micro": float(multilabel_average_precision(scores, target, num_labels=k, average="micro")),
        "ap_per_label": [round(float(v), 4) for v in per_label],
        "precision": float(multilabel_precision(**common, average="micro", zero_division=0)),
        "recall": float(multilabel_recall(**common, average="micro", zero_division=0)),
        "f1": float(multilabel_f1_score(**common, average="micro", zero_division=0)),
        "f1_macro": float(multilabel_f1_score(**common, average="macro", zero_division=0)),
        "precision_per_label": [round(float(v), 4) for v in multilabel_precision(**common, average="none",
                                                                                   zero_division=0)],
        "recall_per_label": [round(float(v), 4) for v in multilabel_recall(**common, average="none",
                                                                             zero_division=0)],
        "f1_per_label": [round(float(v), 4) for v in multilabel_f1_score(**common, average="none", zero_division=0)],
        "support": [int(v) for v in target.sum(dim=0)],
        "exact_match": float(multilabel_exact_match(decided, target, num_labels=k)),
        "hamming_loss": float(multilabel_hamming_distance(decided, target, num_labels=k, average="micro")),
        "thresholds": [round(float(v), 4) for v in cut],
        "count": len(scores),
    }


def tune_thresholds(scores: torch.Tensor, targets: torch.Tensor, mode: str = "per_label") -> list[float]:
    """Decision thresholds that maximize F1 on these scores: one per label (``per_label``; a label without
    positives keeps 0.5), one for all (``global``), or 0.5 (``fixed``). Each sits halfway between the lowest
    score kept and the highest one left out, so a near-miss on new images still falls on its side.

    >>> tune_thresholds(torch.tensor([[0.9, 0.1], [0.4, 0.8], [0.2, 0.3]]), torch.tensor([[1., 0.], [1., 1.],
    ...                 [0., 0.]]))
    [0.3, 0.55]
    """
    k = scores.shape[1]
    if mode == "fixed":
        return [0.5] * k
    if mode == "global":
        return [_best_f1_cut(scores.flatten(), targets.flatten())] * k
    return [_best_f1_cut(scores[:, j], targets[:, j]) for j in range(k)]


def _best_f1_cut(scores: torch.Tensor, targets: torch.Tensor) -> float:
    positives = float(targets.sum())
    if positives == 0:
        return 0.5
    order = scores.double().argsort(descending=True)
    ranked, hits = scores.double()[order], targets.double()[order].cumsum(0)
    f1 = 2 * hits / (positives + torch.arange(1, len(ranked) + 1, dtype=torch.float64))
    distinct = torch.ones(len(ranked), dtype=torch.bool)  # cut only between different scores
    distinct[:-1] = ranked[:-1] != ranked[1:]
    best = int(torch.where(distinct, f1, -1.0).argmax())
    below = float(ranked[best + 1]) if best + 1 < len(ranked) else 0.0
    return round((float(ranked[best]) + below) / 2, 4)


def _evaluate_multilabel(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         prepare: Callable[[torch.Tensor], torch.Tensor], device: torch.device, num_labels: int,
                         gather: Callable[[torch.Tensor], torch.Tensor] | None, thresholds: list[float] | None,
                         tune: str) -> dict:
    meter = MultilabelMeter(num_labels)
    _feed(model, batches, prepare, device, meter.update)
    return meter.compute(gather, thresholds, tune)


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


HEADLINE = ("accuracy", "loss", "top5", "mae", "rmse", "map", "map_micro", "f1", "precision", "recall", "exact_match",
            "hamming_loss")


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Only the plain numbers of an epoch's metrics (no confusion matrices, no private keys)."""
    return {k: v for k, v in metrics.items() if not k.startswith("_") and "/_" not in k
            and isinstance(v, int | float)}
