"""The Registry, and every registered built-in model and dataset (parametrized over the registries, so a
new entry is tested the day it is added)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visiontrain
from visiontrain.data import DATASETS, DESCRIPTIONS
from visiontrain.errors import ModelError, VisiontrainError
from visiontrain.models import MODELS, ModelInput, create_model, get_entry
from visiontrain.registry import Registry


class _Oops(VisiontrainError):
    pass


def test_register_get_list() -> None:
    reg = Registry[int]("number", _Oops)
    assert reg.register("one", 1) == 1
    reg.decorator("two")(2)
    reg.register("three", 3)
    assert reg.get("two") == 2
    assert reg.list() == ["one", "three", "two"]
    assert reg.list("t*") == ["three", "two"]
    assert reg.list("T*") == []  # globs are case-sensitive: names are exact
    assert "one" in reg and "four" not in reg
    assert list(reg) == ["one", "three", "two"] and len(reg) == 3


def test_duplicate_name_is_an_error() -> None:
    reg = Registry[int]("number")
    reg.register("one", 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("one", 11)
    assert reg.get("one") == 1


def test_unknown_name_suggests_close_ones_with_the_registrys_error() -> None:
    reg = Registry[int]("number", _Oops)
    for name in ("small", "medium", "large"):
        reg.register(name, 0)
    with pytest.raises(_Oops) as info:
        reg.get("smal")
    assert str(info.value) == "unknown number 'smal'; did you mean small? choose one of: large, medium, small"
    with pytest.raises(_Oops) as info:
        reg.get("zzz")
    assert "did you mean" not in str(info.value)


def test_public_listing_functions() -> None:
    assert visiontrain.list_models() == MODELS.list()
    assert "small_cnn" in visiontrain.list_models() and "lenet5" in visiontrain.list_models("lenet*")
    assert visiontrain.list_datasets() == sorted(DESCRIPTIONS) == DATASETS.list()


def test_unknown_model_has_a_did_you_mean() -> None:
    with pytest.raises(ModelError, match="did you mean small_cnn"):
        get_entry("small_cn")


def test_torchvision_names_fall_through() -> None:
    entry = get_entry("resnet18")
    assert entry.source == "torchvision" and entry.channels == 3


@pytest.mark.parametrize("name", MODELS.list())
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_every_builtin_model_builds_and_trains_one_step(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, ModelInput(channels, size, 7))
    x = torch.randn(6, channels, size, size)
    y = torch.arange(6) % 7
    logits = model(x)
    assert logits.shape == (6, 7)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # type: ignore[union-attr]
    # the first and the last layer both receive gradient: it flows through the whole network
    assert grads[0].abs().sum() > 0 and grads[-1].abs().sum() > 0  # type: ignore[union-attr]
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", MODELS.list())
def test_every_builtin_model_has_a_description_and_rejects_unknown_args(name: str) -> None:
    assert get_entry(name).description
    with pytest.raises(ModelError, match="has no argument 'nonsense'"):
        create_model(name, ModelInput(3, 32, 4), {"nonsense": 1})


@pytest.mark.parametrize("name", DATASETS.list())
def test_every_dataset_has_a_description(name: str) -> None:
    assert DESCRIPTIONS[name]
