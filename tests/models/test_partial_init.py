"""Partial loading (seed 001 §9): the seed's MobileNet by order, rename rules, by name with a new head,
--strict, the report, and reading every file kind without unpickling anything but tensors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from visiontrain.errors import CheckpointError, ConfigError, ModelError
from visiontrain.models import ModelInput, create_model
from visiontrain.models.partial import load_partial
from visiontrain.models.rebuild import read_model_weights


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                         nn.ReLU(inplace=True), nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
                         nn.ReLU(inplace=True))


_PLAN = [(3, 32, 2), (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
         (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 1024, 2), (1024, 1024, 1)]


class MobileNet(nn.Module):
    """The seed's full MobileNet: ``self.model`` Sequential of 14 blocks, then ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        blocks = [(_conv_bn if i == 0 else _conv_dw)(*p) for i, p in enumerate(_PLAN)]
        self.model = nn.Sequential(*blocks, nn.AvgPool2d(7))
        self.fc = nn.Linear(1024, 1000)


class FirstSeven(nn.Module):
    """The seed's cut: the first 7 blocks as conv1 … conv7."""

    def __init__(self) -> None:
        super().__init__()
        for i, p in enumerate(_PLAN[:7]):
            self.add_module(f"conv{i + 1}", (_conv_bn if i == 0 else _conv_dw)(*p))


@pytest.fixture(scope="module")
def mobilenet_tar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MobileNet]:
    """Saved like the seed's file: DataParallel names (module.model.0.0.weight) inside {'state_dict': …}."""
    torch.manual_seed(0)
    net = MobileNet()
    for m in net.modules():  # non-default statistics, so copying them is visible
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    path = tmp_path_factory.mktemp("seed") / "mobilenet_sgd_rmsprop_69.526.tar"
    torch.save({"epoch": 90, "arch": "mobilenet", "best_prec1": 69.526,
                "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path, net


def test_seed_mobilenet_first_seven_blocks_by_order(mobilenet_tar) -> None:
    path, full = mobilenet_tar
    weights = read_model_weights(path)
    assert weights.nested_in == "state_dict" and weights.stripped == {"module.": len(full.state_dict())}
    net = FirstSeven()
    report = load_partial(net, weights.tensors, match="order", source=str(path))
    # the seed's numbers: 65 tensors in the cut net, 137 in the file, names differ but the order holds
    assert (report.model_tensors, report.file_tensors) == (65, 137)  # BN counters are not weights
    assert len(report.loaded) == 65 and not report.missing and not report.mismatched
    assert len(report.unexpected) == 72 and report.unexpected[0] == "model.7.0.weight"
    assert report.loaded[0] == ("conv1.0.weight", "model.0.0.weight")
    assert torch.equal(net.conv7[4].running_mean, full.model[6][4].running_mean)
    assert torch.equal(net.conv3[3].weight, full.model[2][3].weight)
    with pytest.raises(ModelError, match=r"--strict\): loaded 65 of 65 .* 72 unexpected"):
        load_partial(FirstSeven(), weights.tensors, match="order", strict=True, source="--strict")


def test_rename_rules_prefix_and_regex(mobilenet_tar) -> None:
    path, full = mobilenet_tar
    tensors = read_model_weights(path).tensors
    net = FirstSeven()
    report = load_partial(net, tensors, rules=["module.model.0.=conv1.", r"re:^model\.1\.(\d)\.=conv2.\1."])
    assert report.renamed == 5 + 10 + 3  # two blocks: their tensors and their 3 BN counters
    assert len(report.loaded) == 15 and len(report.missing) == 50
    assert torch.equal(net.conv2[0].weight, full.model[1][0].weight)
    assert "missing (kept their fresh init): conv3.0.weight" in "\n".join(report.lines())
    with pytest.raises(ConfigError, match="matches no key of the file"):
        load_partial(FirstSeven(), tensors, rules=["features.=conv1."])
    with pytest.raises(ConfigError, match="expected OLD=NEW"):
        load_partial(FirstSeven(), tensors, rules=["conv1."])


def test_by_name_into_a_new_class_count_reports_the_head(tmp_path: Path) -> None:
    torch.manual_seed(1)
    old = create_model("cifar_resnet20", ModelInput(3, 32, 4), {"width": 8})
    file = tmp_path / "old.safetensors"
    safetensors.torch.save_file(old.state_dict(), str(file))
    new = create_model("cifar_resnet20", ModelInput(3, 32, 7), {"width": 8})
    report = load_partial(new, read_model_weights(file).tensors, source=str(file))
    assert [m["key"] for m in report.mismatched] == ["fc.weight", "fc.bias"]
    assert report.mismatched[0]["file_shape"] == [4, 32] and report.mismatched[0]["model_shape"] == [7, 32]
    assert not report.missing and not report.unexpected
    assert len(report.loaded) == report.model_tensors - 2
    assert torch.equal(new.stem[0].weight, old.stem[0].weight)
    assert torch.equal(new.stages[2][0].bn2.num_batches_tracked, old.stages[2][0].bn2.num_batches_tracked)
    data = report.to_dict()
    assert json.loads(json.dumps(data))["summary"].startswith(f"loaded {len(report.loaded)} of")
    lines = report.lines()
    assert "shape differs: fc.weight (7, 32) in the model, fc.weight (4, 32) in the file" in "\n".join(lines)


def test_every_file_kind_reads_and_pickles_are_refused(tmp_path: Path) -> None:
    sd = nn.Linear(3, 2).state_dict()
    legacy = tmp_path / "legacy.pt"
    torch.save({"model_state_dict": sd, "optimizer": {}}, legacy, _use_new_zipfile_serialization=False)
    assert read_model_weights(legacy).nested_in == "model_state_dict"
    compiled = tmp_path / "compiled.bin"
    torch.save({f"_orig_mod.module.{k}": v for k, v in sd.items()}, compiled)
    assert set(read_model_weights(compiled).tensors) == {"weight", "bias"}
    whole = tmp_path / "whole.pth"
    torch.save(nn.Linear(3, 2), whole)
    with pytest.raises(CheckpointError, match=r"not a plain state_dict.*torch.save\(model.state_dict\(\), path\)"):
        read_model_weights(whole)
    with pytest.raises(CheckpointError, match="not a safetensors file, a PyTorch state_dict"):
        (tmp_path / "notes.txt").write_text("hello")
        read_model_weights(tmp_path / "notes.txt")


class _Evil:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Evil.marker),))


def test_a_malicious_pickle_never_runs(tmp_path: Path) -> None:
    _Evil.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"weight": _Evil()}, f)
    torch.save({"weight": _Evil()}, tmp_path / "evil2.pth")  # the same inside torch's zip format
    for file in (path, tmp_path / "evil2.pth"):
        with pytest.raises(CheckpointError, match="not a plain state_dict"):
            read_model_weights(file)
    assert not (tmp_path / "pwned").exists()
