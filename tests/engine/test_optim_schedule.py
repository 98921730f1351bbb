"""Optimizers and learning-rate schedules, driven directly with a tiny model: the LR trace of every schedule
(one-cycle's rise and anneal, cosine to ~0, step/multistep exactly at epoch boundaries, linear warm-up,
reduce-on-plateau), weight decay kept off biases and norm layers, and SGD's Nesterov flag."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
import torch
from torch import nn

from visiontrain.config import OptimConfig
from visiontrain.engine.optim import OPTIMIZERS, Schedule, build_optimizer, no_decay_names
from visiontrain.errors import ConfigError

LR = 0.1
SPE, EPOCHS = 10, 4  # optimizer steps per epoch, epochs
TOTAL = SPE * EPOCHS


def _optimizer(**optim: Any) -> tuple[torch.optim.Optimizer, OptimConfig]:
    cfg = OptimConfig(**{"name": "sgd", "lr": LR, **optim})
    return build_optimizer(nn.Linear(3, 2), cfg), cfg


def _trace(**optim: Any) -> list[float]:
    """The learning rate each optimizer step of a whole run uses, as the loop steps the schedule."""
    optimizer, cfg = _optimizer(**optim)
    schedule = Schedule(optimizer, cfg, SPE, EPOCHS)
    lrs = []
    for _ in range(TOTAL):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step_batch()
    return lrs


def test_onecycle_rises_to_the_peak_around_pct_start_then_anneals_to_about_zero() -> None:
    lrs = _trace(schedule="onecycle")
    peak = max(range(TOTAL), key=lrs.__getitem__)
    assert abs(peak - 0.25 * TOTAL) <= 1  # default first phase: a quarter of the run
    assert lrs[peak] == pytest.approx(LR)
    assert lrs[0] == pytest.approx(LR / 25)  # OneCycle's div_factor
    assert all(a < b for a, b in pairwise(lrs[:peak + 1]))  # strictly rising
    assert all(a >= b for a, b in pairwise(lrs[peak:]))  # then never rising
    assert lrs[-1] < LR * 1e-4


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_resume_with_more_epochs_follows_the_new_length(schedule: str) -> None:
    """Resumed after 15 steps of a 4-epoch run with --epochs 6: the schedule ends near zero at the new end."""
    optimizer, cfg = _optimizer(schedule=schedule)
    first = Schedule(optimizer, cfg, SPE, EPOCHS)
    for _ in range(15):
        optimizer.step()
        first.step_batch()
    state = json.loads(json.dumps(first.state_dict(), default=list))
    longer = Schedule(optimizer, cfg, SPE, EPOCHS + 2)
    longer.load_state_dict(state)
    lrs = []
    for _ in range(15, SPE * (EPOCHS + 2)):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        longer.step_batch()
    assert longer.done == SPE * (EPOCHS + 2)
    assert lrs[-1] < LR * 1e-2 and max(lrs) <= LR * (1 + 1e-9)


def test_a_resume_shorter_than_the_steps_done_is_one_line() -> None:
    optimizer, cfg = _optimizer(schedule="onecycle")
    first = Schedule(optimizer, cfg, SPE, EPOCHS)
    for _ in range(25):
        optimizer.step()
        first.step_batch()
    with pytest.raises(ConfigError, match="more --epochs"):
        Schedule(optimizer, cfg, SPE, 2).load_state_dict(first.state_dict())


def test_onecycle_warmup_epochs_sets_its_rising_phase() -> None:
    lrs = _trace(schedule="onecycle", warmup_epochs=2)
    assert abs(max(range(TOTAL), key=lrs.__getitem__) - 2 * SPE) <= 1


def test_cosine_starts_at_the_peak_and_ends_near_zero() -> None:
    lrs = _trace(schedule="cosine")
    assert lrs[0] == pytest.approx(LR)
    assert all(a >= b for a, b in pairwise(lrs))
    assert lrs[TOTAL // 2] == pytest.approx(LR / 2, rel=1e-6)
    assert lrs[-1] < LR * 0.01


@pytest.mark.parametrize(("optim", "decays_at"), [
    ({"schedule": "step", "step_size": 1}, [1, 2, 3]),
    ({"schedule": "step", "step_size": 2}, [2]),
    ({"schedule": "multistep", "milestones": [1, 3]}, [1, 3]),
])
def test_step_and_multistep_decay_exactly_at_epoch_boundaries(optim: dict[str, Any], decays_at: list[int]) -> None:
    lrs = _trace(gamma=0.1, **optim)
    for step, lr in enumerate(lrs):
        decays = sum(step >= epoch * SPE for epoch in decays_at)
        assert lr == pytest.approx(LR * 0.1 ** decays, rel=1e-9), (step, lr)
    changes = [s for s in range(1, TOTAL) if lrs[s] != lrs[s - 1]]
    assert changes == [e * SPE for e in decays_at]


def test_linear_warmup_ramps_in_front_of_cosine() -> None:
    lrs = _trace(schedule="cosine", warmup_epochs=1)
    ramp = lrs[:SPE]
    diffs = [b - a for a, b in pairwise(ramp)]
    assert all(d > 0 for d in diffs)
    assert max(diffs) - min(diffs) < 1e-12  # linear: equal increments
    assert ramp[-1] < LR
    assert lrs[SPE] == pytest.approx(LR)  # the peak right after the warm-up, then cosine down
    assert all(a >= b for a, b in pairwise(lrs[SPE:]))
    assert lrs[-1] < LR * 0.02


def test_fractional_warmup_and_constant_schedule() -> None:
    lrs = _trace(schedule="none", warmup_epochs=0.5)
    warm = SPE // 2
    assert all(lrs[s] < lrs[s + 1] for s in range(warm))
    assert lrs[warm:] == [pytest.approx(LR)] * (TOTAL - warm)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_plateau_lowers_the_lr_after_patience_epochs_without_improvement(mode: str) -> None:
    optimizer, cfg = _optimizer(schedule="plateau", plateau_patience=2, gamma=0.5)
    schedule = Schedule(optimizer, cfg, SPE, 10, monitor_mode=mode)
    better = 1.0 if mode == "max" else -1.0
    lrs = []
    metric = 0.5
    for improves in [True, True, False, False, False, True, False, False, False]:
        for _ in range(SPE):
            optimizer.step()
            schedule.step_batch()  # after the warm-up, per-step calls leave the rate to plateau
        metric += better * 0.1 if improves else 0.0
        schedule.step_epoch(metric)
        lrs.append(optimizer.param_groups[0]["lr"])
    # torch semantics: the (patience + 1)-th epoch in a row without improvement halves the rate
    assert lrs == pytest.approx([LR, LR, LR, LR, LR / 2, LR / 2, LR / 2, LR / 2, LR / 4])


def test_plateau_state_round_trips_through_plain_data() -> None:
    optimizer, cfg = _optimizer(schedule="plateau", plateau_patience=0)
    schedule = Schedule(optimizer, cfg, SPE, EPOCHS)
    for _ in range(2):
        for _ in range(SPE):
            optimizer.step()
            schedule.step_batch()
        schedule.step_epoch(0.5)  # the second: no improvement with patience 0, so it decays
    state = json.loads(json.dumps(schedule.state_dict()))  # plain data: resume needs no pickle
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR * cfg.gamma)
    other_opt, _ = _optimizer(schedule="plateau", plateau_patience=0)
    other = Schedule(other_opt, cfg, SPE, EPOCHS)
    other_opt.load_state_dict(optimizer.state_dict())  # as a resume does: the rates live in the optimizer
    other.load_state_dict(state)
    assert other.done == 2 * SPE
    assert other.state_dict()["plateau"] == state["plateau"]
    other.step_epoch(0.5)  # still no improvement: decays again from the restored state
    assert other_opt.param_groups[0]["lr"] == pytest.approx(LR * cfg.gamma ** 2)


def test_unknown_schedule_and_optimizer_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown schedule"):
        _trace(schedule="warp")
    with pytest.raises(ConfigError, match="unknown optimizer"):
        _optimizer(name="lion")


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.body = nn.Sequential(nn.Linear(4, 8, bias=False), nn.LayerNorm(8), nn.GroupNorm(2, 8))
        self.head = nn.Linear(8, 2)


def test_no_decay_names_are_biases_and_norm_parameters() -> None:
    assert no_decay_names(_Net()) == {"conv.bias", "bn.weight", "bn.bias", "body.1.weight", "body.1.bias",
                                      "body.2.weight", "body.2.bias", "head.bias"}


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_weight_decay_only_reaches_weights(name: str) -> None:
    model = _Net()
    optimizer = build_optimizer(model, OptimConfig(name=name, weight_decay=0.05))
    ids = {id(p): n for n, p in model.named_parameters()}
    decayed = {ids[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {ids[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed == {"conv.weight", "body.0.weight", "head.weight"}
    assert plain == no_decay_names(model)
    assert all(g["weight_decay"] in (0.0, 0.05) for g in optimizer.param_groups)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out_and_all_frozen_is_an_error() -> None:
    model = _Net()
    model.conv.requires_grad_(False)
    optimizer = build_optimizer(model, OptimConfig())
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model.conv.weight) not in params and id(model.head.weight) in params
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(model, OptimConfig())


@pytest.mark.parametrize(("nesterov", "momentum", "expected"), [(True, 0.9, True), (False, 0.9, False),
                                                                 (True, 0.0, False)])
def test_sgd_nesterov_flag_reaches_the_optimizer(nesterov: bool, momentum: float, expected: bool) -> None:
    optimizer, _ = _optimizer(nesterov=nesterov, momentum=momentum)
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["nesterov"] is expected and g["momentum"] == momentum for g in optimizer.param_groups)


def test_nesterov_changes_the_update() -> None:
    def run(nesterov: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, nesterov=nesterov))
        x = torch.randn(8, 3)
        for _ in range(3):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
        return model.weight.detach().clone()

    assert not torch.equal(run(True), run(False))


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                           ("rmsprop", torch.optim.RMSprop), ("sgd", torch.optim.SGD)])
def test_optimizers_by_name(name: str, cls: type) -> None:
    optimizer, _ = _optimizer(name=name)
    assert type(optimizer) is cls
    assert all(g["lr"] == LR for g in optimizer.param_groups)


def test_lr_scale_makes_groups_with_scaled_rates() -> None:
    model = _Net()
    optimizer = build_optimizer(model, OptimConfig(lr=0.01, weight_decay=0.1),
                                lr_scale=lambda n: 0.1 if n.startswith("conv") else 1.0)
    rates = {(g["lr_scale"], g["weight_decay"]): g["lr"] for g in optimizer.param_groups}
    assert rates == pytest.approx({(0.1, 0.1): 0.001, (0.1, 0.0): 0.001, (1.0, 0.1): 0.01, (1.0, 0.0): 0.01})
    lrs = []
    schedule = Schedule(optimizer, OptimConfig(lr=0.01, schedule="cosine"), SPE, EPOCHS)
    for _ in range(SPE):
        optimizer.step()
        schedule.step_batch()
        lrs.append(sorted(g["lr"] / g["lr_scale"] for g in optimizer.param_groups))
    assert all(max(x) - min(x) < 1e-12 for x in lrs)  # every group follows the same curve, scaled


def test_optimizer_flags_reach_the_optimizer_and_schedule() -> None:
    from visiontrain.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--optimizer", "sgd", "--nesterov", "--momentum", "0.8",
                                      "--weight-decay", "0.01", "--schedule", "cosine", "--warmup-epochs", "1"])
    cfg = config_from_args(args).optim
    optimizer = build_optimizer(_Net(), cfg)
    assert all(g["nesterov"] and g["momentum"] == 0.8 for g in optimizer.param_groups)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.01]
    schedule = Schedule(optimizer, cfg, SPE, EPOCHS)
    assert (schedule.kind, schedule.warm) == ("cosine", SPE)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_step_is_fused_on_a_gpu_and_torchs_default_elsewhere(name: str, device: str) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to(device)
    optimizer = build_optimizer(model, OptimConfig(name=name, lr=0.1, momentum=0.9, weight_decay=1e-4))
    fused = {g.get("fused") for g in optimizer.param_groups}
    assert fused == ({True} if device == "cuda" and name in ("sgd", "adam", "adamw") else {None}), fused
    model(torch.randn(8, 4, device=device)).sum().backward()
    optimizer.step()  # the fused kernel accepts these groups (decayed and not)
