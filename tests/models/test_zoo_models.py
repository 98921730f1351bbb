"""The zoo: every registered model builds and trains a step; every torchvision family gets a new head;
the gray stem adaptation is exact; the recurrent classifiers learn; `models` and `models show` print."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
import torchvision
from torch import nn

import visiontrain
from visiontrain.config import ModelConfig
from visiontrain.errors import ModelError
from visiontrain.models import MODELS, ModelInput, create_model, get_entry
from visiontrain.models.assembly import build_model
from visiontrain.models.rebuild import rebuild_model
from visiontrain.models.surgery import find_head, replace_head
from visiontrain.models.torchvision_models import classifier_names, family
from visiontrain.models.zoo import on_meta


def _train_step(model: nn.Module, inp: ModelInput) -> None:
    x = torch.randn(4, inp.channels, inp.size, inp.size)
    y = torch.arange(4) % inp.num_classes
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    logits = model(x)
    assert logits.shape == (4, inp.num_classes)
    nn.functional.cross_entropy(logits, y).backward()
    opt.step()
    assert torch.isfinite(logits).all()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_registered_model_builds_and_trains_a_step(name: str, channels: int) -> None:
    inp = ModelInput(channels, max(16, get_entry(name).min_size), 3)
    args = {"width": 8} if "width" in inspect.signature(get_entry(name).builder).parameters else {}
    _train_step(create_model(name, inp, args), inp)


def _one_per_family() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in sorted(classifier_names()):
        found.setdefault(family(name), name)
    return found


FAMILIES = _one_per_family()


def test_the_families_cover_the_issue_list() -> None:
    for fam in ("resnet", "vgg", "mobilenet_v2", "mobilenet_v3", "efficientnet", "convnext", "vit", "densenet",
                "squeezenet", "regnet", "swin", "inception", "googlenet", "shufflenet", "mnasnet", "alexnet"):
        assert fam in FAMILIES


@pytest.mark.parametrize("name", list(FAMILIES.values()))
def test_head_replacement_for_each_torchvision_family(name: str) -> None:
    size = max(get_entry(name).min_size, 64)
    with on_meta():  # shapes only: the whole family list in a second
        model = create_model(name, ModelInput(3, size, 1000)).to("meta")
        path = find_head(model, 1000)
        assert path in {"fc", "classifier", "classifier.1", "classifier.2", "classifier.3", "classifier.5",
                        "classifier.6", "head", "heads.head"}
        replace_head(model, 7, path=path)
        assert model.eval()(torch.zeros(2, 3, size, size)).shape == (2, 7)
        replace_head(model, 7, hidden=[16], path=path)
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 7)
        # a checkpoint's model entry rebuilds exactly these tensors (names and shapes)
        rebuilt = rebuild_model({"name": name, "args": {}, "head": [16]}, ModelInput(3, size, 7))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5",
                                  "efficientnet_b0", "regnet_x_400mf", "mnasnet0_5"])
def test_small_torchvision_models_train_a_step_on_gray_input(name: str) -> None:
    inp = ModelInput(1, 32, 3)
    _train_step(create_model(name, inp), inp)


def test_vit_builds_for_the_input_side_and_says_when_it_cannot() -> None:
    with on_meta():
        assert create_model("vit_b_16", ModelInput(3, 32, 4))(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ModelError, match=r"vit_b_16.*cannot be built"):
        create_model("vit_b_16", ModelInput(3, 40, 4))


def test_gray_stem_adaptation_equals_the_rgb_net_on_repeated_gray() -> None:
    torch.manual_seed(0)
    rgb = torchvision.models.resnet18(num_classes=5).eval()
    gray = build_model(ModelConfig("resnet18"), ModelInput(1, 32, 5)).model.eval()
    state = {k: v for k, v in rgb.state_dict().items() if k != "conv1.weight"}
    state["conv1.weight"] = rgb.conv1.weight.detach().sum(dim=1, keepdim=True)
    gray.load_state_dict(state)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_classifiers_learn_the_synthetic_set(name: str, tmp_path) -> None:
    config = {"data": {"name": "synthetic", "args": {"channels": 1, "size": 16, "train": 600, "val": 200,
                                                     "test": 200}, "batch_size": 32},
              "model": {"name": name, "args": {"hidden": 64, "bidirectional": name == "gru"}},
              "optim": {"lr": 0.01}, "train": {"epochs": 4, "log_every": 50}, "out": str(tmp_path), "name": name}
    run = visiontrain.train(config, quiet=True)
    assert run.summary["best"]["accuracy"] > 0.8  # 4 classes: chance is 0.25


def test_models_lists_with_columns_and_filters(main_cli) -> None:
    r = main_cli("models", "--all", "--filter", "resnet1*", "--json")
    assert r.code == 0
    rows = {row["name"]: row for row in json.loads(r.out)}
    assert set(rows) == {"resnet18", "resnet101", "resnet152"}
    assert rows["resnet18"]["parameter_count"] == 11_181_642  # 10 classes
    assert rows["resnet18"]["input"] == "3x224x224" and rows["resnet18"]["source"] == "torchvision"
    table = main_cli("models", "--filter", "cifar_*")
    assert table.out.splitlines()[0].split() == ["NAME", "PARAMETERS", "INPUT", "SOURCE", "DESCRIPTION"]
    assert sum(line.startswith("cifar_resnet") for line in table.out.splitlines()) == 5


def test_models_show_prints_a_layer_table(main_cli) -> None:
    r = main_cli("models", "show", "resnet18", "--image-size", "64", "--channels", "1", "--classes", "5",
                 "--head", "32", "--freeze-backbone")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "resnet18 for 1x64x64 input, 5 classes"
    assert lines[1].split() == ["LAYER", "TYPE", "OUTPUT", "PARAMETERS", "TRAINABLE"]
    assert lines[2].split() == ["conv1", "Conv2d", "64x32x32", "3,136", "no"]  # 7x7x64 gray stem
    assert "fc.2 Linear 5 165 yes" in [" ".join(line.split()) for line in lines]
    assert lines[-1] == "total: 11,186,821 parameters (16,581 trainable); output 5; head: fc"
    as_json = json.loads(main_cli("models", "show", "lstm", "--json").out)
    assert [row["layer"] for row in as_json["layers"]] == ["rnn", "fc"] and as_json["output"] == [10]
