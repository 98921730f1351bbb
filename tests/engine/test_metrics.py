"""Metrics are sums over the whole split, never averages of per-batch figures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from visiontrain.engine.metrics import ClassificationMeter, evaluate_batches, headline


class _Lookup(nn.Module):
    """A 'model' whose logits for an image are stored under the image's id (its first pixel)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()] + self.bias


def _one_hot_logits(preds: list[int], k: int) -> torch.Tensor:
    return nn.functional.one_hot(torch.tensor(preds), k).float() * 4.0


def _batches(labels: list[int], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ids = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1)
    y = torch.tensor(labels)
    return [(ids[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(labels), batch_size)]


def test_short_last_batch_counts_by_sample_not_by_batch() -> None:
    # 8 images in batches of 7 + 1: the first 7 are all right, the last one is wrong.
    labels = [0, 1, 2, 0, 1, 2, 0, 1]
    preds = [0, 1, 2, 0, 1, 2, 0, 2]
    model = _Lookup(_one_hot_logits(preds, 3))
    batches = _batches(labels, 7)
    assert [len(b[1]) for b in batches] == [7, 1]
    result = evaluate_batches(model, batches, lambda x: x.float(), torch.device("cpu"), 3)
    per_batch_mean = (7 / 7 + 0 / 1) / 2  # what averaging per-batch accuracies would report
    assert result["accuracy"] == 7 / 8 != per_batch_mean
    assert result["count"] == 8
    # loss is the mean over samples too: the exact cross-entropy of all 8 at once
    exact = nn.functional.cross_entropy(_one_hot_logits(preds, 3), torch.tensor(labels)).item()
    assert result["loss"] == pytest.approx(exact, rel=1e-6)
    per_batch_loss = sum(nn.functional.cross_entropy(_one_hot_logits(preds, 3)[i:i + 7], torch.tensor(labels)[i:i + 7])
                         .item() for i in (0, 7)) / 2
    assert result["loss"] != pytest.approx(per_batch_loss, rel=1e-3)


def test_confusion_rows_are_truth_and_per_class_accuracy() -> None:
    meter = ClassificationMeter(3)
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = [0, 1, 1, 1, 1, 0]
    logits = _one_hot_logits(preds, 3)
    meter.update(logits[:4], targets[:4], torch.tensor(1.0))
    meter.update(logits[4:], targets[4:], torch.tensor(2.0))
    r = meter.compute()
    assert r["confusion"] == [[1, 2, 0], [0, 2, 0], [1, 0, 0]]
    assert r["per_class_accuracy"] == [1 / 3, 1.0, 0.0]
    assert r["accuracy"] == 3 / 6 == sum(r["confusion"][i][i] for i in range(3)) / 6
    assert r["loss"] == 3.0 / 6  # loss_sum is summed, then divided by the sample count
    assert r["count"] == 6


def test_class_without_samples_is_nan_not_zero() -> None:
    meter = ClassificationMeter(3)
    meter.update(_one_hot_logits([0, 1], 3), torch.tensor([0, 1]), torch.tensor(0.0))
    per_class = meter.compute()["per_class_accuracy"]
    assert per_class[:2] == [1.0, 1.0] and math.isnan(per_class[2])


def test_top5_with_fewer_than_five_classes_is_top_k() -> None:
    meter = ClassificationMeter(4)
    meter.update(torch.randn(10, 4), torch.randint(0, 4, (10,)), torch.tensor(0.0))
    assert meter.compute()["top5"] == 1.0


def test_top5_counts_rank_at_most_five() -> None:
    k = 8
    # ranks of the true class: 1, 5, 6 → two of three inside the top five
    logits = torch.tensor([[8.0, 7, 6, 5, 4, 3, 2, 1]] * 3)
    targets = torch.tensor([0, 4, 5])
    meter = ClassificationMeter(k)
    meter.update(logits, targets, torch.tensor(0.0))
    r = meter.compute()
    assert (r["accuracy"], r["top5"]) == (1 / 3, 2 / 3)


def test_empty_split_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        ClassificationMeter(2).compute()


def test_evaluate_batches_restores_the_training_mode_and_keeps_gradients_off() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, o.requires_grad)))
    batches = [(torch.randint(0, 255, (3, 1, 2, 2), dtype=torch.uint8), torch.tensor([0, 1, 0]))]
    a = evaluate_batches(model, batches, lambda x: x.float(), torch.device("cpu"), 2)
    b = evaluate_batches(model, batches, lambda x: x.float(), torch.device("cpu"), 2)
    assert a == b  # eval mode: dropout off, so the same numbers twice
    assert seen == [(False, False), (False, False)]
    assert model.training


def test_headline_keeps_the_scalars() -> None:
    full = {"accuracy": 0.5, "loss": 1.0, "top5": 1.0, "count": 4, "confusion": [[1]], "per_class_accuracy": [1]}
    assert headline(full) == {"accuracy": 0.5, "loss": 1.0, "top5": 1.0}
