"""The callback chain of a real ``visiontrain.train`` run: callbacks are called by the phase their ``order`` names
(a user's lands after the built-ins have measured, judged and logged an event, before the resume point), a fit
that fails part-way still cleans up (Ctrl-C handler back, TensorBoard closed, nothing saved from the broken
step) and raises its own error, and ``--plots off`` draws no pictures."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import visiontrain
from visiontrain.checkpoint.format import read_sidecar
from visiontrain.engine import losses
from visiontrain.engine.callbacks import ORDERS, Callback, Callbacks, StopTraining
from visiontrain.engine.resume import read_resume
from visiontrain.errors import ConfigError
from visiontrain.trainer.folders import as_config
from visiontrain.trainer.wiring import build_callbacks, build_state
from visiontrain.watch.console import ConsoleLogger

SMALL = {"train": 192, "val": 64, "test": 32, "size": 16}  # batches of 32: 6 steps per epoch


def _config(out: Path, name: str, **train: Any) -> dict[str, Any]:
    return {"data": {"name": "synthetic", "batch_size": 32, "args": dict(SMALL)},
            "train": {"epochs": 2, "log_every": 1, "device": "cpu", "plots": False, **train},
            "out": str(out), "name": name}


class _Seen(Callback):
    """What a callback of the given order finds when the first epoch ends; ``calls`` records who came when."""

    def __init__(self, order: str | None = None, calls: list[str] | None = None) -> None:
        if order is not None:
            self.order = order  # type: ignore[assignment]
        self.calls = calls if calls is not None else []
        self.seen: dict[str, Any] | None = None

    def on_epoch_end(self, state: Any) -> None:
        self.calls.append(self.order)
        if self.seen is None:
            lines = (state.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            self.seen = {"ema": any("_ema/" in k for k in state.epoch_metrics), "best": state.best is not None,
                         "logged": any(json.loads(line)["kind"] == "epoch" for line in lines),
                         "resume point": (state.run_dir / "checkpoints" / "resume.safetensors").exists()}


class _Persist(_Seen):
    order = "persist"

    def state_dict(self) -> dict[str, Any]:
        return {"epochs seen": self.calls.count("persist")}


def test_a_callback_sees_each_event_in_the_phase_its_order_names(tmp_path: Path) -> None:
    calls: list[str] = []
    persist = _Persist(calls=calls)
    seen = {order: _Seen(order, calls) for order in ("control", "observe", "measure")}  # given backwards
    default = _Seen(calls=calls)
    run = visiontrain.train(_config(tmp_path, "order", epochs=2, ema_decay=0.9),
                            callbacks=[persist, *seen.values(), default], quiet=True)
    assert calls == ["measure", "observe", "control", "control", "persist"] * 2
    assert {order: cb.seen for order, cb in seen.items()} == {
        "measure": {"ema": True, "best": False, "logged": False, "resume point": False},  # after the EMA's figures
        "observe": {"ema": True, "best": True, "logged": True, "resume point": False},  # after the best and logs
        "control": {"ema": True, "best": True, "logged": True, "resume point": False},
    }
    assert default.seen == seen["control"].seen
    # The resume point comes last of all: it holds the persist callback's state after the event.
    assert persist.seen == {"ema": True, "best": True, "logged": True, "resume point": False}
    meta, _ = read_resume(run.dir / "checkpoints" / "resume.safetensors")
    assert meta["callbacks"]["_Persist"] == {"epochs seen": 2}


def test_the_built_in_chain_runs_by_phase(tmp_path: Path) -> None:
    cfg = as_config(_config(tmp_path, "chain", ema_decay=0.9, early_stop_patience=2, plots=True))
    state, data, built = build_state(cfg)
    state.run_dir = tmp_path
    user = _Seen()
    chain = build_callbacks(state, data, built, [user], quiet=False, started=0.0)
    assert [type(cb).__name__ for cb in chain.items] == [
        "EMAUpdate",  # measure: adds val_ema/* to the epoch's figures
        "BestSaver",  # decide: state.best, before early stopping reads it
        "ConsoleLogger", "MetricsFile", "ResultsFile", "TensorBoardLogger", "Pictures", "LoaderBound",  # observe
        "TimeTotals",
        "EarlyStopping", "GracefulInterrupt", "_Seen",  # control: the user's by default
        "CheckpointSaver",  # persist: its resume point holds every other callback's state after the event
    ]
    assert [ORDERS.index(cb.order) for cb in chain.items] == sorted(ORDERS.index(cb.order) for cb in chain.items)


def test_an_unknown_order_is_one_clear_error_before_anything_is_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"callback _Seen has order 'later'; use one of: measure, decide, observe, "
                                          r"control, persist"):
        visiontrain.train(_config(tmp_path, "bad"), callbacks=[_Seen("later")], quiet=True)
    assert not (tmp_path / "bad").exists()


class _FailAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, state: Any) -> None:
        if state.step == self.step:
            raise RuntimeError(f"a bug at step {self.step}")


class _FailingLoss(nn.Module):
    """Cross-entropy that raises on its ``at``-th call (a real exception inside the loop's forward pass)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError(f"a bug at step {self.at}")
        return nn.functional.cross_entropy(logits, labels)


class _CleanupFails(Callback):
    order = "measure"  # first to clean up: the callbacks after it must still close what they opened

    def on_fit_end(self, state: Any) -> None:
        raise OSError("cannot close something")


@pytest.mark.parametrize("where", ["callback", "loss", "cleanup too"])
def test_a_fit_that_fails_mid_epoch_cleans_up_saves_nothing_broken_and_raises_its_own_error(
        where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The step-4 failure comes where a periodic checkpoint (every 2 steps) would be written.
    config = _config(tmp_path, "failed", checkpoint_every=2)
    callbacks: list[Callback] = [ConsoleLogger(progress=True)]  # a progress bar open when the step fails
    if where == "loss":
        monkeypatch.setitem(losses.LOSSES, "failing", ("classification", lambda cfg, weights: _FailingLoss(4)))
        config["train"]["loss"] = "failing"
    else:
        callbacks += [_FailAt(4)] + ([_CleanupFails()] if where == "cleanup too" else [])
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError) as raised:
        visiontrain.train(config, callbacks=callbacks, quiet=True)
    assert str(raised.value) == "a bug at step 4"  # the fit's own error, not one met while cleaning up
    assert signal.getsignal(signal.SIGINT) is handler  # GracefulInterrupt put the original back
    assert callbacks[0]._bar is None  # type: ignore[attr-defined]  # the progress bar is closed
    if where == "cleanup too":
        assert "_CleanupFails.on_fit_end failed too: OSError: cannot close something" in raised.value.__notes__[0]
    run = tmp_path / "failed"
    assert _open_files(run) == []  # TensorBoard's event file and metrics.jsonl are closed
    events = EventAccumulator(str(run))
    events.Reload()  # what the writer had queued is on disk
    logged = [e.step for e in events.Scalars("train/loss")]
    assert logged == ([1, 2, 3] if where == "loss" else [1, 2, 3, 4])
    meta, _ = read_resume(run / "checkpoints" / "resume.safetensors")
    assert meta["step"] == read_sidecar(run / "checkpoints" / "last.json")["step"] == 2  # nothing of step 3 or 4
    assert not (run / "summary.json").exists() and not (run / "plots").exists()


class _StopAt(Callback):
    def on_batch_end(self, state: Any) -> None:
        if state.step == 3:
            raise StopTraining("enough")


def test_a_cleanup_error_after_a_good_fit_is_raised_once_every_callback_has_closed(tmp_path: Path) -> None:
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(OSError, match="cannot close something"):
        visiontrain.train(_config(tmp_path, "stopped"), callbacks=[_StopAt(), _CleanupFails()], quiet=True)
    assert signal.getsignal(signal.SIGINT) is handler
    run = tmp_path / "stopped"
    assert _open_files(run) == []
    # The stop at step 3 is saved at the end of the fit, after the callback that failed to close.
    assert read_sidecar(run / "checkpoints" / "last.json")["step"] == read_resume(
        run / "checkpoints" / "resume.safetensors")[0]["step"] == 3


def _open_files(folder: Path) -> list[str]:
    """The files under ``folder`` this process still has open (Linux: /proc/self/fd)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd")
    inside = []
    for fd in fds.iterdir():
        try:
            target = Path(os.readlink(fd))
        except OSError:
            continue
        if target.is_relative_to(folder.resolve()):
            inside.append(str(target))
    return inside


def test_callbacks_sort_stably_and_add_goes_after_its_phase() -> None:
    a, b, c = _Seen("observe"), _Seen(), _Seen("observe")
    chain = Callbacks([a, b, c])
    assert chain.items == [a, c, b]
    d = _Seen("observe")
    chain.add(d)
    assert chain.items == [a, c, d, b]


@pytest.mark.parametrize("plots", ["off", "on"])
def test_plots_off_draws_no_pictures_and_keeps_the_samples(plots: str, tmp_path: Path, main_cli) -> None:
    result = main_cli("train", "--data", "synthetic", "--data-arg", "train=64", "--data-arg", "val=32",
                      "--data-arg", "test=16", "--data-arg", "size=16", "--epochs", "1", "--batch-size", "32",
                      "--device", "cpu", "--quiet", "--plots", plots, "--out", tmp_path, "--name", "run")
    assert result.code == 0, result.err
    run = tmp_path / "run"
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    images = events.Tags()["images"]
    pngs = sorted(p.name for p in (run / "plots").glob("*.png")) if (run / "plots").exists() else []
    if plots == "off":
        assert images == [] and pngs == [] and not (run / "plots").exists()
    else:
        assert {"train/batch", "val/confusion_matrix"} <= set(images)
        assert {"loss.png", "accuracy.png", "confusion_matrix.png"} <= set(pngs)
    assert events.Scalars("val/accuracy")  # the numbers are logged either way
    assert list((run / "samples").iterdir())  # what the closing `visiontrain predict` line uses
