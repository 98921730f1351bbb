"""Pretrained weights offline: torchvision enum names through a (fake) torch hub cache, one clear line when
the file is missing, weights files for any model, and a fine-tuned checkpoint that loads back through
``visiontrain.load()`` with identical logits after the cache is gone."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

import visiontrain
from visiontrain.config import ModelConfig
from visiontrain.data import Preprocessing
from visiontrain.engine.callbacks import Callback
from visiontrain.errors import CheckpointError, ModelError
from visiontrain.models import ModelInput
from visiontrain.models.assembly import build_model, model_spec
from visiontrain.models.download import hub_file
from visiontrain.models.rebuild import rebuild_model

WEIGHTS = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TORCH_HOME whose hub cache holds a 'pretrained' mobilenet_v3_small (random, same file name).

    Its SHA-256 is not the one the name carries (the real file cannot be made offline): the tests that load it
    through the enum name turn the hash check off (``pretrained_check_hash``), as a user would for weights they
    saved there themselves; the check itself is tested below on this very file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = hub_file(WEIGHTS.url)
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    path.parent.mkdir(parents=True)
    torch.manual_seed(3)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    return path


def test_enum_name_loads_from_the_hub_cache_and_replaces_the_head(torch_home: Path) -> None:
    file = torch.load(torch_home, weights_only=True)
    for value in ("DEFAULT", "IMAGENET1K_V1", "MobileNet_V3_Small_Weights.IMAGENET1K_V1", "imagenet1k_v1"):
        built = build_model(ModelConfig("mobilenet_v3_small", pretrained=value, pretrained_check_hash=False),
                            ModelInput(3, 32, 5))
        state = built.model.state_dict()
        assert built.head == "classifier.3" and built.head_replaced
        assert state["classifier.3.weight"].shape == (5, 1024)
        assert all(torch.equal(state[k], v) for k, v in file.items() if not k.startswith("classifier.3."))
    prep = built.preprocessing(Preprocessing(3, 32, (0.5,) * 3, (0.2,) * 3))
    assert prep.mean == (0.485, 0.456, 0.406) and prep.std == (0.229, 0.224, 0.225)  # the weights' own


def test_a_cache_file_whose_hash_does_not_match_its_name_is_refused_in_one_line(torch_home: Path, main_cli,
                                                                                one_line_error) -> None:
    """torch.hub checks the SHA-256 prefix a weights file's name carries only while downloading; a file saved
    under that name afterwards (here: random weights as mobilenet_v3_small-047dcff4.pth) was loaded as ImageNet's."""
    digest = hashlib.sha256(torch_home.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError) as err:
        build_model(ModelConfig("mobilenet_v3_small", pretrained="DEFAULT"), ModelInput(3, 32, 5))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{torch_home}: its SHA-256 begins {digest[:8]}, not 047dcff4")
    assert "removed it from the cache" in message and WEIGHTS.url in message and not torch_home.exists()
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), torch_home)
    result = main_cli("train", "--data", "synthetic", "--data-arg", "train=8", "--data-arg", "val=4", "--data-arg",
                      "test=4", "--model", "mobilenet_v3_small", "--pretrained", "--out", torch_home.parent)
    one_line_error(result, "mobilenet_v3_small-047dcff4.pth", "not 047dcff4", "removed it from the cache")


def test_missing_cache_file_is_one_line_with_file_folder_and_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig("mobilenet_v3_small", pretrained="DEFAULT", offline=True), ModelInput(3, 32, 5))
    message = str(err.value)
    assert "\n" not in message
    assert "mobilenet_v3_small-047dcff4.pth" in message and WEIGHTS.url in message
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in message


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("mobilenet_v3_small", "IMAGENET1K_V9", "has weights IMAGENET1K_V1, DEFAULT"),
    ("small_cnn", "DEFAULT", "'small_cnn' has no torchvision weights; pass a weights file"),
    ("small_cnn", "missing/file.pth", "missing/file.pth does not exist"),
])
def test_bad_pretrained_values_say_what_exists(name: str, value: str, fragment: str) -> None:
    with pytest.raises(visiontrain.VisiontrainError, match=fragment.replace("(", r"\(")):
        build_model(ModelConfig(name, pretrained=value), ModelInput(3, 32, 5))


def test_weights_file_into_a_gray_model_sums_the_stem(torch_home: Path) -> None:
    file = torch.load(torch_home, weights_only=True)
    built = build_model(ModelConfig("mobilenet_v3_small", pretrained=str(torch_home), in_channels=1),
                        ModelInput(1, 32, 1000))
    stem = built.model.features[0][0].weight
    assert stem.shape == (16, 1, 3, 3) and not built.head_replaced  # same class count: the head is kept
    torch.testing.assert_close(stem, file["features.0.0.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(built.model.classifier[3].weight, file["classifier.3.weight"])


def test_pretrained_that_does_not_fit_says_why(torch_home: Path) -> None:
    with pytest.raises(ModelError, match=r"has no 'fc.weight'.*use --init-from"):
        build_model(ModelConfig("resnet18", pretrained=str(torch_home)), ModelInput(3, 32, 5))


def test_inception_weights_imply_transform_input_in_the_checkpoint_spec() -> None:
    spec = model_spec(ModelConfig("googlenet", pretrained="DEFAULT"), 3)
    assert spec == {"name": "googlenet", "args": {"transform_input": True}, "head": None}
    assert rebuild_model(spec, ModelInput(3, 64, 3)).transform_input is True
    assert model_spec(ModelConfig("googlenet", pretrained="DEFAULT"), 1)["args"] == {}


class _Keep(Callback):
    def on_fit_end(self, state) -> None:
        self.model = state.model


def test_finetuned_checkpoint_loads_back_without_the_cache(torch_home: Path, tmp_path: Path) -> None:
    keep = _Keep()
    config = {"data": {"name": "synthetic", "args": {"channels": 1, "size": 32, "train": 96, "val": 32, "test": 16},
                       "batch_size": 32},
              "model": {"name": "mobilenet_v3_small", "pretrained": "DEFAULT", "in_channels": 1, "head": [16],
                        "freeze": ["features.0.*"], "pretrained_check_hash": False},
              "train": {"epochs": 1},  # plots on: --plots off also skips the TensorBoard graph checked below
              "out": str(tmp_path / "runs"), "name": "ft"}
    run = visiontrain.train(config, callbacks=[keep], quiet=True)
    shutil.rmtree(torch_home.parent.parent.parent)  # the cache is gone: loading needs no pretrained file
    loaded = visiontrain.load(run.dir, which="last", device="cpu")
    assert loaded.meta["model"] == {"name": "mobilenet_v3_small", "args": {}, "head": [16]}
    assert loaded.prep.channels == 1 and loaded.prep.mean == (pytest.approx(0.449),)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.dir))
    events.Reload()
    nodes = [node.name for node in events.Graph().node]  # the graph TensorBoard shows is the trained model's
    assert any("Sequential[classifier]/Sequential[3]/Linear[2]" in n for n in nodes)
    x = torch.randn(3, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), keep.model.eval()(x), rtol=0, atol=0)
