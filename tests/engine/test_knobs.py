"""Every training knob, checked by what it does to a real (small) training run through ``visiontrain.train``:
EMA weights differ from the raw ones and are saved and loadable; clipping bounds the gradient norm; 4×16
accumulation equals a batch of 64; label smoothing and class weights reach the loss; MixUp/CutMix mix the
targets and still train; bf16 and fp16 autocast on the CPU; keep-last, monitor=val/loss, reduce-on-plateau.

The per-epoch pictures (matplotlib figures: ~2 s per epoch on a small CPU, >90% of these runs) are off here
(``train.plots: false``); they are not what these tests are about.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

import visiontrain
from visiontrain.config import TrainConfig
from visiontrain.engine.callbacks import Callback
from visiontrain.engine.losses import class_weights
from visiontrain.engine.precision import Precision
from visiontrain.engine.setup import seed_everything
from visiontrain.errors import ConfigError

SMALL = {"train": 256, "val": 64, "test": 32, "size": 16}


def _train(out: Path, name: str, *, model: str = "small_cnn", batch: int = 32, data: dict | None = None,
           optim: dict | None = None, callbacks: list[Callback] | None = None, **train: Any) -> visiontrain.Run:
    config = {"data": {"name": "synthetic", "batch_size": batch, "args": dict(SMALL), **(data or {})},
              "model": {"name": model}, "optim": optim or {},
              "train": {"epochs": 1, "log_every": 1, "device": "cpu", "plots": False, **train}, "out": str(out),
              "name": name}
    return visiontrain.train(config, callbacks=callbacks, quiet=True)


def _weights(run: visiontrain.Run, which: str = "last") -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(run.dir / "checkpoints" / f"{which}.safetensors")


def _epochs(run: visiontrain.Run) -> list[dict[str, Any]]:
    lines = (run.dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


class _GradProbe(Callback):
    """After each optimizer step: the pre-clip norm the loop computed and the norm of the grads it stepped with."""

    def __init__(self) -> None:
        self.pre: list[float] = []
        self.post: list[float] = []

    def on_batch_end(self, state: Any) -> None:
        assert state.grad_norm is not None, "clipping is on, so the loop must report the pre-clip norm"
        self.pre.append(float(state.grad_norm))
        grads = [p.grad.detach().double().norm() for p in state.model.parameters() if p.grad is not None]
        self.post.append(float(torch.stack(grads).norm()))


CLIP = 0.25


@pytest.fixture(scope="module")
def combo(tmp_path_factory: pytest.TempPathFactory) -> tuple[visiontrain.Run, _GradProbe]:
    """One run for several knobs at once: EMA, clipping, keep-last 2 of 3 epochs, best by lowest val/loss."""
    probe = _GradProbe()
    run = _train(tmp_path_factory.mktemp("knobs"), "combo", epochs=3, ema_decay=0.9, clip_grad_norm=CLIP,
                 keep_last=2, monitor="val/loss", optim={"lr": 0.01}, callbacks=[probe])
    return run, probe


def test_ema_weights_differ_from_raw_and_are_saved_and_loadable(combo: tuple[visiontrain.Run, _GradProbe]) -> None:
    run, _ = combo
    folder = run.dir / "checkpoints"
    assert (folder / "ema.safetensors").is_file() and (folder / "ema.json").is_file()
    raw, ema = _weights(run), _weights(run, "ema")
    assert raw.keys() == ema.keys()
    differing = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], ema[k])]
    assert any(k.endswith("weight") for k in differing)
    meta = json.loads((folder / "ema.json").read_text(encoding="utf-8"))
    assert meta["ema_decay"] == 0.9
    loaded = visiontrain.load(folder / "ema.json", device="cpu")
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor.cpu(), ema[name]), name
    assert loaded.classes == run.summary["data"]["classes"]
    final_ema = run.summary["final_ema"]
    assert 0.0 <= final_ema["accuracy"] <= 1.0 and final_ema["loss"] > 0
    assert final_ema != run.summary["final"]
    assert all("val_ema/accuracy" in record for record in _epochs(run))


def test_clipping_bounds_the_gradient_norm(combo: tuple[visiontrain.Run, _GradProbe]) -> None:
    _, probe = combo
    assert len(probe.pre) == run_steps(combo)
    assert max(probe.pre) > CLIP * 1.5, "the test needs steps whose raw gradient is larger than the clip"
    for pre, post in zip(probe.pre, probe.post, strict=True):
        assert post <= CLIP * (1 + 1e-4) + 1e-6
        if pre <= CLIP:  # small gradients pass untouched
            assert post == pytest.approx(pre, rel=1e-4)


def run_steps(combo: tuple[visiontrain.Run, _GradProbe]) -> int:
    return int(combo[0].summary["steps"])


def test_keep_last_keeps_exactly_k_epoch_checkpoints(combo: tuple[visiontrain.Run, _GradProbe]) -> None:
    run, _ = combo
    folder = run.dir / "checkpoints"
    assert sorted(p.name for p in folder.glob("epoch-*")) == [
        "epoch-0002.json", "epoch-0002.safetensors", "epoch-0003.json", "epoch-0003.safetensors"]
    assert json.loads((folder / "epoch-0003.json").read_text(encoding="utf-8"))["epoch"] == 3
    assert all(torch.equal(a, b) for a, b in zip(_weights(run, "epoch-0003").values(), _weights(run).values(),
                                                   strict=True))


def test_monitor_val_loss_picks_the_lowest_loss(combo: tuple[visiontrain.Run, _GradProbe]) -> None:
    run, _ = combo
    losses = {r["epoch"]: r["val/loss"] for r in _epochs(run)}
    best_epoch = min(losses, key=losses.__getitem__)
    best = run.summary["best"]
    assert best["monitor"] == "val/loss" and best["epoch"] == best_epoch
    assert best["value"] == pytest.approx(losses[best_epoch])
    meta = json.loads((run.dir / "checkpoints" / "best.json").read_text(encoding="utf-8"))
    assert meta["epoch"] == best_epoch and meta["monitor"] == "val/loss"


def test_accumulating_4x16_equals_one_batch_of_64(tmp_path: Path) -> None:
    # mlp: no BatchNorm (batch statistics would differ) and no dropout; the epoch order depends only on
    # (n, seed, epoch), so both runs see the same samples in the same order
    accumulated = _train(tmp_path, "acc", model="mlp", batch=16, accumulate=4, epochs=2)
    whole = _train(tmp_path, "whole", model="mlp", batch=64, epochs=2)
    plain = _train(tmp_path, "plain16", model="mlp", batch=16, epochs=2)
    assert accumulated.summary["steps"] == whole.summary["steps"] == 2 * SMALL["train"] // 64
    a, w, p = _weights(accumulated), _weights(whole), _weights(plain)
    for name in w:
        torch.testing.assert_close(a[name], w[name], rtol=1e-4, atol=1e-5)
    assert max(float((p[k] - w[k]).abs().max()) for k in w) > 1e-3  # 16 steps of 16 really are different
    assert accumulated.summary["train"]["loss"] == pytest.approx(whole.summary["train"]["loss"], rel=1e-5)


class _LossProbe(Callback):
    def __init__(self) -> None:
        self.loss_fn: Any = None
        self.classes: list[str] = []

    def on_fit_start(self, state: Any) -> None:
        self.loss_fn, self.classes = state.loss_fn, list(state.classes)


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory: pytest.TempPathFactory, shape_folder: Callable[..., Path]) -> Path:
    """A folder-per-class set with 2 circles and 6 of each other shape."""
    root = shape_folder(tmp_path_factory.mktemp("imbalanced") / "shapes", 6, size=16)
    for extra in sorted((root / "circle").glob("*.png"))[2:]:
        extra.unlink()
    return root


def test_class_weights_auto_and_label_smoothing_reach_the_loss(tmp_path: Path, imbalanced: Path) -> None:
    probe = _LossProbe()
    run = _train(tmp_path, "weighted", model="mlp", batch=8, data={"name": str(imbalanced), "val_split": 0.0,
                 "args": {}}, class_weights="auto", label_smoothing=0.1, callbacks=[probe])
    loss = probe.loss_fn
    assert isinstance(loss, torch.nn.CrossEntropyLoss)
    assert loss.label_smoothing == pytest.approx(0.1)
    counts = {"circle": 2, "cross": 6, "square": 6, "triangle": 6}
    expected = [sum(counts.values()) / (len(counts) * counts[c]) for c in probe.classes]
    torch.testing.assert_close(loss.weight.cpu(), torch.tensor(expected))  # inverse frequency, mean 1 per image
    assert loss.weight[probe.classes.index("circle")] == pytest.approx(3 * loss.weight[probe.classes.index("cross")])
    assert run.summary["steps"] == 3


def test_class_weight_list_and_wrong_length() -> None:
    cfg = TrainConfig(class_weights=[1.0, 2.0, 3.0])
    assert class_weights(cfg, None, 3).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="3 values but the data has 4 classes"):
        class_weights(cfg, None, 4)
    assert class_weights(TrainConfig(class_weights="auto"), torch.tensor([0, 0, 0, 1]), 2).tolist() == [
        pytest.approx(4 / 6), pytest.approx(2.0)]


class _TargetProbe(Callback):
    """Wraps the run's batch transform to record what MixUp/CutMix hand to the loss."""

    def __init__(self) -> None:
        self.targets: list[torch.Tensor] = []

    def on_fit_start(self, state: Any) -> None:
        inner = state.batch_transform
        assert inner is not None, "mixup/cutmix are on: the run must have a batch transform"

        def recording(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mixed, targets = inner(images, labels)
            self.targets.append(targets.detach().clone())
            return mixed, targets

        state.batch_transform = recording


def test_mixup_and_cutmix_mix_the_targets_and_train(tmp_path: Path) -> None:
    probe = _TargetProbe()
    run = _train(tmp_path, "mix", epochs=2, mixup_alpha=0.4, cutmix_alpha=1.0, callbacks=[probe])
    assert len(probe.targets) == 2 * SMALL["train"] // 32
    for targets in probe.targets:
        assert targets.dtype.is_floating_point and targets.shape[1] == 4  # soft targets over the 4 classes
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(targets)))
    assert any(bool(((t > 0) & (t < 1)).any()) for t in probe.targets)  # really mixed, not one-hot
    first, second = _epochs(run)
    assert second["train/loss"] < first["train/loss"]
    assert run.summary["final"]["accuracy"] > 0.25  # better than chance on 4 balanced classes


class _DtypeProbe(Callback):
    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()
        self.scales: list[float] = []
        self.scaler_on = False

    def on_fit_start(self, state: Any) -> None:
        state.model.register_forward_hook(lambda m, i, out: self.dtypes.add(out.dtype) if m.training else None)
        self.scaler_on = state.precision.scaler.is_enabled()

    def on_batch_end(self, state: Any) -> None:
        if self.scaler_on:
            self.scales.append(float(state.precision.scaler.get_scale()))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_trains_on_the_cpu(tmp_path: Path, precision: str) -> None:
    # fp16 on the CPU works: autocast has float16 CPU kernels and torch's GradScaler runs on the CPU too
    probe = _DtypeProbe()
    run = _train(tmp_path, precision, model="mlp", epochs=2, precision=precision, callbacks=[probe])
    assert probe.dtypes == {torch.bfloat16 if precision == "bf16" else torch.float16}
    assert probe.scaler_on is (precision == "fp16")
    if precision == "fp16":
        assert probe.scales and all(s > 0 and float(s).is_integer() for s in probe.scales)
    weights = _weights(run)
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in weights.values()
               if t.is_floating_point())  # master weights stay fp32
    first, second = _epochs(run)
    assert second["train/loss"] < first["train/loss"]
    assert run.summary["final"]["accuracy"] > 0.4


def test_unknown_precision_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        Precision("fp8", torch.device("cpu"))


def test_plateau_lowers_the_lr_in_a_real_run(tmp_path: Path) -> None:
    # a rate too small to change anything: val accuracy never improves, so with patience 0 every epoch
    # after the first multiplies the rate by gamma
    run = _train(tmp_path, "plateau", epochs=3, optim={"name": "sgd", "lr": 1e-6, "schedule": "plateau",
                                                       "plateau_patience": 0, "gamma": 0.5})
    lrs = [r["train/lr"] for r in _epochs(run)]
    assert lrs == pytest.approx([1e-6, 1e-6, 5e-7], rel=1e-6)
    steps = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    last_epoch_steps = [r["lr"] for r in steps if r["kind"] == "step" and r["epoch"] == 3]
    assert last_epoch_steps and all(lr == pytest.approx(5e-7) for lr in last_epoch_steps)


def test_deterministic_flag_turns_on_torch_deterministic_algorithms() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before)
