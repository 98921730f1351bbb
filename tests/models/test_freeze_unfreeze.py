"""Freezing: frozen weights and BatchNorm statistics are bit-identical after training, frozen BN stays in eval
mode through the loop's model.train(), gradual unfreezing adds optimizer groups under every schedule, and
the backbone learning-rate scale gives discriminative rates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import visiontrain
from visiontrain.config import ModelConfig, OptimConfig
from visiontrain.engine.callbacks import Callback
from visiontrain.engine.optim import SCHEDULES, build_optimizer
from visiontrain.errors import ConfigError
from visiontrain.models import ModelInput
from visiontrain.models.assembly import build_model
from visiontrain.models.surgery import is_locked, unfreeze


class Snapshots(Callback):
    """Copies of the state_dict at fit start and after every epoch; BN modes seen while training."""

    def __init__(self) -> None:
        self.at: dict[str, dict[str, torch.Tensor]] = {}
        self.bn_training: set[bool] = set()
        self.groups: list[dict] = []

    @staticmethod
    def _copy(state) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in state.model.state_dict().items()}

    def on_fit_start(self, state) -> None:
        self.at["start"] = self._copy(state)

    def on_batch_end(self, state) -> None:
        self.bn_training |= {m.training for m in state.model.modules() if isinstance(m, torch.nn.BatchNorm2d)
                             and not m.weight.requires_grad}

    def on_epoch_end(self, state) -> None:
        self.at[f"epoch{state.epoch}"] = self._copy(state)
        self.groups = [{k: v for k, v in g.items() if k != "params"} | {"n": len(g["params"])}
                       for g in state.optimizer.param_groups]


def _train(tmp_path: Path, model: dict, epochs: int = 2, schedule: str = "cosine") -> Snapshots:
    snaps = Snapshots()
    config = {"data": {"name": "synthetic", "args": {"size": 16, "train": 192, "val": 64, "test": 32},
                       "batch_size": 32},
              "model": {"name": "cifar_resnet20", "args": {"width": 8}, **model},
              "optim": {"schedule": schedule, "lr": 0.01},
              "train": {"epochs": epochs, "log_every": 100, "plots": False},  # pictures: seconds a run, not checked
              "out": str(tmp_path), "name": "run"}
    visiontrain.train(config, callbacks=[snaps], quiet=True)
    return snaps


def _split(keys, head: str = "fc.") -> tuple[list[str], list[str]]:
    return [k for k in keys if not k.startswith(head)], [k for k in keys if k.startswith(head)]


def test_frozen_backbone_is_bit_identical_and_bn_stats_unchanged(tmp_path: Path) -> None:
    snaps = _train(tmp_path, {"freeze_backbone": True})
    start, end = snaps.at["start"], snaps.at["epoch2"]
    backbone, head = _split(start)
    assert any("running_mean" in k for k in backbone) and any("num_batches_tracked" in k for k in backbone)
    for key in backbone:  # weights, running_mean/var and the batch counters alike
        assert torch.equal(start[key], end[key]), key
    assert all(not torch.equal(start[k], end[k]) for k in head)
    assert snaps.bn_training == {False}  # frozen BN was in eval mode during every training batch
    assert (tmp_path / "run" / "checkpoints" / "best.json").is_file()


def test_freeze_patterns_freeze_only_what_they_match(tmp_path: Path) -> None:
    snaps = _train(tmp_path, {"freeze": ["stem", "stages.0.*"]}, epochs=1)
    start, end = snaps.at["start"], snaps.at["epoch1"]
    frozen = [k for k in start if k.startswith(("stem.", "stages.0."))]
    trained = [k for k in start if k.startswith(("stages.2.", "fc.")) and "num_batches" not in k]
    assert frozen and all(torch.equal(start[k], end[k]) for k in frozen)
    assert all(not torch.equal(start[k], end[k]) for k in trained)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gradual_unfreezing_under_every_schedule(tmp_path: Path, schedule: str) -> None:
    snaps = _train(tmp_path, {"freeze_backbone": True, "unfreeze_at": 2, "backbone_lr_scale": 0.1}, epochs=2,
                   schedule=schedule)
    start, after1, after2 = snaps.at["start"], snaps.at["epoch1"], snaps.at["epoch2"]
    backbone, _ = _split(start)
    weights = [k for k in backbone if k.endswith("weight")]
    assert all(torch.equal(start[k], after1[k]) for k in backbone)  # epoch 1: frozen
    assert all(not torch.equal(after1[k], after2[k]) for k in weights)  # epoch 2: training
    head_lr = {g["lr"] for g in snaps.groups if g["lr_scale"] == 1.0}
    backbone_lr = {g["lr"] for g in snaps.groups if g["lr_scale"] == 0.1}
    assert len(snaps.groups) >= 3 and backbone_lr  # new groups, decay and no-decay kept apart
    for lr in backbone_lr:
        assert lr == pytest.approx(0.1 * max(head_lr), rel=1e-6)


def test_frozen_batchnorm_ignores_model_train_until_unfrozen() -> None:
    built = build_model(ModelConfig("cifar_resnet20", {"width": 8}, freeze_backbone=True), ModelInput(3, 16, 4))
    model = built.model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(is_locked(m) and not m.training for m in bns)
    x = torch.randn(8, 3, 16, 16)
    before = bns[0].running_mean.clone()
    model(x)
    assert torch.equal(bns[0].running_mean, before)
    unfreeze(model, built.frozen)
    model.train()
    assert all(m.training and not is_locked(m) for m in bns)
    model(x)
    assert not torch.equal(bns[0].running_mean, before)


def test_backbone_lr_scale_gives_discriminative_rates() -> None:
    built = build_model(ModelConfig("resnet18", backbone_lr_scale=0.1), ModelInput(3, 32, 4))
    opt = build_optimizer(built.model, OptimConfig(lr=0.01), lr_scale=built.lr_scale)
    by_scale = {}
    for group in opt.param_groups:
        by_scale.setdefault(group["lr_scale"], set()).add(round(group["lr"], 9))
    assert by_scale == {1.0: {0.01}, 0.1: {0.001}}
    head_params = {id(p) for p in built.model.fc.parameters()}
    for group in opt.param_groups:
        assert all((id(p) in head_params) == (group["lr_scale"] == 1.0) for p in group["params"])


def test_freeze_mistakes_are_one_line_errors(main_cli, one_line_error) -> None:
    r = main_cli("train", "--data", "synthetic", "--set", "data.args.train=8", "--freeze", "feature.*",
                 "--out", "unused")
    one_line_error(r, "--freeze 'feature.*' matches no parameter", "names look like")
    r = main_cli("train", "--unfreeze-at", "2")
    one_line_error(r, "model.unfreeze_at needs something frozen")
    with pytest.raises(ConfigError, match="backbone_lr_scale must be positive"):
        visiontrain.RunConfig.from_dict({"model": {"backbone_lr_scale": 0}})
