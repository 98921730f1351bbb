"""`timm/<name>` models when the optional timm extra is installed (skipped otherwise)."""

from __future__ import annotations

import json

import pytest
import torch

from visiontrain.config import ModelConfig
from visiontrain.errors import ModelError
from visiontrain.models import ModelInput, create_model, get_entry
from visiontrain.models.assembly import build_model
from visiontrain.models.rebuild import rebuild_model

timm = pytest.importorskip("timm")


def test_timm_model_builds_for_any_channels_and_trains_a_step() -> None:
    entry = get_entry("timm/resnet10t")
    assert entry.source == "timm" and entry.default_size == timm.get_pretrained_cfg("resnet10t").input_size[-1]
    model = create_model("timm/resnet10t", ModelInput(1, 32, 3))
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 1, 32, 32)), torch.tensor([0, 2]))
    loss.backward()
    assert model.conv1[0].weight.grad is not None


def test_timm_head_replacement_and_pretrained_file(tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "timm.pth"
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), path)
    built = build_model(ModelConfig("timm/resnet10t", pretrained=str(path), head=[16]), ModelInput(3, 32, 4))
    assert built.head == "fc" and built.model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    rebuilt = rebuild_model(built.spec, ModelInput(3, 32, 4))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in
                                                                     built.model.state_dict().items()}
    with pytest.raises(ModelError, match="timm has no such weights for resnet10t; it has c3_in1k"):
        build_model(ModelConfig("timm/resnet10t", pretrained="nope"), ModelInput(3, 32, 4))
    with pytest.raises(ModelError, match="unknown timm model 'resnet9000'"):
        get_entry("timm/resnet9000")


def test_timm_models_are_listed_by_a_timm_filter(main_cli) -> None:
    rows = json.loads(main_cli("models", "--filter", "timm/resnet10t", "--json").out)
    assert [r["name"] for r in rows] == ["timm/resnet10t"] and rows[0]["source"] == "timm"
