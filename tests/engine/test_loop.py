"""The training loop through the public API: exact per-epoch sums over a short last batch, the callback
contract (order, counts, StopTraining), train/eval modes, and seeded determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import visiontrain
from visiontrain.engine.callbacks import Callback, StopTraining

TRAIN_N, BATCH = 200, 48  # 5 batches per epoch, the last one of 8 images
BATCHES = -(-TRAIN_N // BATCH)


def _config(out: Path, **train: Any) -> dict[str, Any]:
    return {"data": {"name": "synthetic", "batch_size": BATCH, "args": {"train": TRAIN_N, "val": 40, "test": 40}},
            "train": {"epochs": 2, "log_every": 2, **train}, "out": str(out)}


class _Recorder(Callback):
    """Records every event, and each training batch's size, mean loss and correct count."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.batches: list[list[dict[str, Any]]] = []  # per epoch, per batch
        self.epochs: list[dict[str, Any]] = []
        self.modes: list[bool] = []
        self._preds: torch.Tensor | None = None

    def _hook(self, module, inputs, output) -> None:
        self.modes.append(module.training)
        if module.training:
            self._preds = output.detach().argmax(dim=1)

    def on_fit_start(self, state) -> None:
        self.events.append("fit_start")
        state.model.register_forward_hook(self._hook)

    def on_epoch_start(self, state) -> None:
        self.events.append("epoch_start")
        self.batches.append([])

    def on_batch_end(self, state) -> None:
        self.events.append("batch_end")
        assert self._preds is not None and state.labels is not None
        self.batches[-1].append({"n": len(state.labels), "loss": state.loss_value(),
                                 "correct": int((self._preds == state.labels).sum()), "step": state.step})

    def on_epoch_end(self, state) -> None:
        self.events.append("epoch_end")
        self.epochs.append(dict(state.epoch_metrics))

    def on_fit_end(self, state) -> None:
        self.events.append("fit_end")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[visiontrain.Run, _Recorder]:
    rec = _Recorder()
    run = visiontrain.train(_config(tmp_path_factory.mktemp("loop"), seed=3), callbacks=[rec], quiet=True)
    return run, rec


def test_callback_order_and_counts(recorded) -> None:
    run, rec = recorded
    epoch = ["epoch_start", *["batch_end"] * BATCHES, "epoch_end"]
    assert rec.events == ["fit_start", *epoch, *epoch, "fit_end"]
    assert [b["step"] for batches in rec.batches for b in batches] == list(range(1, 2 * BATCHES + 1))
    assert run.summary["steps"] == 2 * BATCHES and run.summary["epochs_completed"] == 2


def test_epoch_figures_are_sums_over_samples(recorded) -> None:
    _, rec = recorded
    differs = []
    for batches, metrics in zip(rec.batches, rec.epochs, strict=True):
        sizes = [b["n"] for b in batches]
        assert sizes == [BATCH] * (BATCHES - 1) + [TRAIN_N - BATCH * (BATCHES - 1)]
        exact_acc = sum(b["correct"] for b in batches) / TRAIN_N
        exact_loss = sum(b["loss"] * b["n"] for b in batches) / TRAIN_N
        assert metrics["train/accuracy"] == exact_acc
        assert metrics["train/loss"] == pytest.approx(exact_loss, rel=1e-6)
        per_batch_acc = sum(b["correct"] / b["n"] for b in batches) / len(batches)
        per_batch_loss = sum(b["loss"] for b in batches) / len(batches)
        differs.append(per_batch_acc != exact_acc and per_batch_loss != pytest.approx(exact_loss, rel=1e-6))
    assert any(differs)  # the short batch makes the wrong (per-batch) average visibly different


def test_training_batches_run_in_train_mode_and_validation_in_eval_mode(recorded) -> None:
    _, rec = recorded
    # per epoch: 5 training forwards, then 1 validation forward (40 images in one eval batch)
    assert rec.modes[: BATCHES + 1] == [True] * BATCHES + [False]
    assert rec.modes.count(True) == 2 * BATCHES


def test_validation_metrics_each_epoch(recorded) -> None:
    run, rec = recorded
    for m in rec.epochs:
        assert {"val/accuracy", "val/loss", "val/top5", "train/lr"} <= set(m)
        assert 0 <= m["val/accuracy"] <= 1
    assert run.summary["final"]["accuracy"] == rec.epochs[-1]["val/accuracy"]
    assert run.summary["best"]["accuracy"] == max(m["val/accuracy"] for m in rec.epochs)


def test_stop_training_from_a_callback(tmp_path: Path) -> None:
    class StopAt(Callback):
        def on_batch_end(self, state) -> None:
            if state.step == 3:
                raise StopTraining("enough at step 3")

    run = visiontrain.train(_config(tmp_path), callbacks=[StopAt()], quiet=True)
    s = run.summary
    assert (s["steps"], s["epochs_completed"], s["stopped_early"]) == (3, 0, True)
    assert s["stop_reason"] == "enough at step 3"
    assert (run.dir / "checkpoints" / "last.json").is_file()  # progress kept when stopped inside an epoch
    assert visiontrain.load(run.dir, which="last").meta["step"] == 3


@pytest.mark.slow  # the default tier's seed check is test_resume's (weights, with MixUp and dropout)
def test_seeded_runs_repeat_and_other_seeds_differ(tmp_path: Path, recorded) -> None:
    _, rec = recorded
    again, other = _Recorder(), _Recorder()
    visiontrain.train(_config(tmp_path, seed=3), callbacks=[again], quiet=True)
    visiontrain.train(_config(tmp_path, seed=4), callbacks=[other], quiet=True)

    def numbers(r: _Recorder) -> list:
        return [[(b["loss"], b["correct"]) for b in batches] for batches in r.batches]

    assert numbers(again) == numbers(rec)
    assert numbers(other) != numbers(rec)


def test_without_a_validation_split_the_best_is_judged_on_train(tmp_path: Path, shape_folder) -> None:
    root = shape_folder(tmp_path / "shapes", per_class=6, size=16)
    cfg = {"data": {"name": str(root), "val_split": 0, "batch_size": 8}, "model": "mlp", "epochs": 2,
           "out": str(tmp_path / "runs")}
    run = visiontrain.train(cfg, quiet=True)
    s = run.summary
    assert s["monitor_split"] == "train" and s["best"]["split"] == "train"
    assert set(s["final"]) == {"accuracy", "loss"} and s["final"]["accuracy"] == s["train"]["accuracy"]
    assert "test" not in s
    assert s["data"]["counts"] == {"train": 24}


def test_val_split_0_keeps_the_last_epoch_and_never_selects_on_test(tmp_path: Path, shape_folder, main_cli) -> None:
    """With no validation split the best checkpoint was picked on the test split and that same test score
    reported: selection on test. Now the last epoch is the result, said in one line at the start."""
    root = tmp_path / "shapes"
    shape_folder(root / "train", per_class=6, size=16)
    shape_folder(root / "test", per_class=3, size=16, seed=1)
    result = main_cli("train", "--data", root, "--val-split", "0", "--model", "mlp", "--epochs", "3",
                      "--batch-size", "8", "--no-plots", "--out", tmp_path / "runs", "--name", "noval")
    assert result.code == 0, result.err
    note = [line for line in result.err.splitlines()[:4] if "no validation split" in line]
    assert len(note) == 1 and "the last epoch is kept" in note[0] and "test split is only reported" in note[0]
    run = tmp_path / "runs" / "noval"
    s = json.loads((run / "summary.json").read_text())
    assert s["best"]["epoch"] == 3 and s["best"]["monitor"] == "last" and s["best"]["split"] == "test"
    assert json.loads((run / "checkpoints" / "best.json").read_text())["epoch"] == 3
    best, last = (load_file(run / "checkpoints" / f"{n}.safetensors") for n in ("best", "last"))
    assert all(torch.equal(best[k], last[k]) for k in last)
    assert "last test:" in result.out and "no validation split" in result.out
