"""Checkpoints: safetensors + JSON sidecar round-trip bit-exactly; every damaged or foreign file is a
CheckpointError with one line naming the file."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

import visiontrain
from visiontrain.checkpoint.format import FORMAT, load_weights, read_sidecar, save_checkpoint
from visiontrain.data.synthetic import make_shapes
from visiontrain.engine.callbacks import Callback
from visiontrain.errors import CheckpointError
from visiontrain.models import ModelInput, create_model


class _KeepModel(Callback):
    """Keeps a copy of the model as it is when training ends (what `last` must hold)."""

    def on_fit_end(self, state) -> None:
        self.last = copy.deepcopy(state.model)
        self.state = state


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[visiontrain.Run, _KeepModel]:
    keep = _KeepModel()
    cfg = {"data": {"name": "synthetic", "args": {"train": 400, "val": 100, "test": 100}}, "epochs": 2,
           "batch_size": 32, "out": str(tmp_path_factory.mktemp("ckpt")), "name": "r"}
    return visiontrain.train(cfg, callbacks=[keep], quiet=True), keep


@pytest.fixture
def ckpt(trained, tmp_path: Path) -> Path:
    """A private copy of the run's checkpoints folder, free to damage."""
    run, _ = trained
    return Path(shutil.copytree(run.dir / "checkpoints", tmp_path / "checkpoints"))


def _batch() -> torch.Tensor:
    return make_shapes(37, 32, 3, seed=99)[0]  # 37: not a multiple of anything


def _logits(model: torch.nn.Module, loaded: visiontrain.LoadedModel, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(loaded.prep.normalizer()(images))


def test_round_trip_gives_identical_logits(trained) -> None:
    run, keep = trained
    last = visiontrain.load(run.dir, which="last", device="cpu")
    images = _batch()
    assert torch.equal(last.logits(images), _logits(keep.last, last, images))
    # After training, the in-memory model holds the best weights (the test split was scored with them).
    best = visiontrain.load(run.dir, device="cpu")
    assert torch.equal(best.logits(images), _logits(keep.state.model, best, images))
    for name, tensor in keep.last.state_dict().items():
        assert torch.equal(last.model.state_dict()[name], tensor), name
    assert not last.model.training


def test_loaded_model_carries_what_using_it_needs(trained) -> None:
    run, keep = trained
    loaded = visiontrain.load(run.dir)
    assert loaded.classes == ["circle", "square", "triangle", "cross"]
    assert (loaded.prep.channels, loaded.prep.size) == (3, 32)
    assert loaded.prep == keep.state.prep
    assert (loaded.meta["model"]["name"], loaded.meta["model"]["args"]) == ("small_cnn", {})
    assert loaded.meta["config"] == run.config.to_dict()


def test_every_way_to_name_a_checkpoint(trained) -> None:
    run, _ = trained
    ck = run.dir / "checkpoints"
    for path in (run.dir, str(run.dir), ck, ck / "best.json", ck / "best.safetensors"):
        assert visiontrain.load(path).path == ck / "best.json", path
    assert visiontrain.load(ck / "last.json").path == ck / "last.json"
    assert visiontrain.load(run.dir, which="last").path == ck / "last.json"


def _edit(path: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _error(path: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        visiontrain.load(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_bad_json(ckpt: Path) -> None:
    (ckpt / "best.json").write_text('{"format": "visiontrain.checkpoint", ')
    _error(ckpt / "best.json", str(ckpt / "best.json"), "not a readable checkpoint sidecar")


def test_not_a_visiontrain_sidecar(ckpt: Path) -> None:
    (ckpt / "best.json").write_text("[1, 2, 3]")
    _error(ckpt / "best.json", str(ckpt / "best.json"), "not a visiontrain checkpoint sidecar")


@pytest.mark.parametrize("field", ["classes", "model", "preprocessing", "weights", "format_version"])
def test_missing_field(ckpt: Path, field: str) -> None:
    _edit(ckpt / "best.json", lambda m: m.pop(field))
    _error(ckpt / "best.json", str(ckpt / "best.json"), f"field {field!r} is missing")


def test_newer_format_version(ckpt: Path) -> None:
    _edit(ckpt / "best.json", lambda m: m.update(format_version=99))
    _error(ckpt / "best.json", "newer visiontrain")


def test_wrong_class_count_for_the_weights(ckpt: Path) -> None:
    _edit(ckpt / "best.json", lambda m: m["classes"].append("hexagon"))
    _error(ckpt / "best.json", str(ckpt / "best.json"), "weights do not fit the model", "lists 5 classes",
           "has 4 outputs")


def test_model_name_of_another_registered_model(ckpt: Path) -> None:
    _edit(ckpt / "best.json", lambda m: m["model"].update(name="lenet5"))
    _error(ckpt / "best.json", str(ckpt / "best.json"), "weights do not fit the model")


def test_model_name_unknown(ckpt: Path) -> None:
    _edit(ckpt / "best.json", lambda m: m["model"].update(name="nosuchnet"))
    _error(ckpt / "best.json", str(ckpt / "best.json"), "cannot rebuild its model", "unknown model 'nosuchnet'")


def test_weights_of_another_run_fail_the_hash(ckpt: Path, synthetic_run: visiontrain.Run) -> None:
    shutil.copyfile(synthetic_run.dir / "checkpoints" / "best.safetensors", ckpt / "best.safetensors")
    _error(ckpt / "best.json", str(ckpt / "best.safetensors"), "SHA-256 differs", "best.json")


def test_missing_weights_file(ckpt: Path) -> None:
    (ckpt / "best.safetensors").unlink()
    _error(ckpt / "best.json", str(ckpt / "best.safetensors"), "cannot read the weights file that best.json names")


def test_a_sidecar_naming_another_weights_file_is_named_in_the_error(ckpt: Path) -> None:
    _edit(ckpt / "best.json", lambda m: m["weights"].update(file=" est.safetensors"))  # (found by the fuzz test)
    _error(ckpt / "best.json", " est.safetensors", "best.json names")


def test_missing_sidecar_of_a_safetensors_without_its_fields(ckpt: Path) -> None:
    (ckpt / "best.json").unlink()  # a .safetensors of an older visiontrain: only "format" in its header
    tensors = safetensors.torch.load_file(ckpt / "best.safetensors")
    safetensors.torch.save_file(tensors, ckpt / "best.safetensors", metadata={"format": "visiontrain.checkpoint"})
    _error(ckpt / "best.safetensors", str(ckpt / "best.json"), "sidecar not found", "does not carry its fields")


def test_a_damaged_header_of_a_lone_safetensors_is_checked_as_a_sidecar(ckpt: Path) -> None:
    (ckpt / "best.json").unlink()
    with safetensors.safe_open(str(ckpt / "best.safetensors"), framework="pt") as f:
        header, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for key, value, fragment in (("classes", json.dumps("cat"), "classes"), ("model", "{not json", "not JSON")):
        safetensors.torch.save_file(tensors, ckpt / "best.safetensors", metadata={**header, key: value})
        _error(ckpt / "best.safetensors", str(ckpt / "best.safetensors"), fragment)


def test_garbage_weights_with_a_matching_hash(ckpt: Path) -> None:
    blob = b"this is not a safetensors file"
    (ckpt / "best.safetensors").write_bytes(blob)
    _edit(ckpt / "best.json", lambda m: m["weights"].update(sha256=hashlib.sha256(blob).hexdigest()))
    _error(ckpt / "best.json", str(ckpt / "best.safetensors"), "not a valid safetensors file")


def test_pickle_files_are_refused(tmp_path: Path) -> None:
    model = create_model("small_cnn", ModelInput(3, 32, 4))
    for name in ("model.pth", "model.pt", "model.ckpt"):
        torch.save(model.state_dict(), tmp_path / name)
        _error(tmp_path / name, str(tmp_path / name), "PyTorch pickle")


def test_missing_paths(tmp_path: Path) -> None:
    _error(tmp_path / "nope", str(tmp_path / "nope"), "does not exist")
    _error(tmp_path / "nope.pth", str(tmp_path / "nope.pth"), "does not exist")
    (tmp_path / "empty_run").mkdir()
    _error(tmp_path / "empty_run", "holds no checkpoint")


def test_save_checkpoint_writes_the_pair_atomically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("mlp", ModelInput(1, 8, 3), {"hidden": [5]})
    meta = {"model": {"name": "mlp", "args": {"hidden": [5]}}, "classes": ["a", "b", "c"],
            "preprocessing": {"channels": 1, "size": 8, "mean": [0.5], "std": [0.25]}}
    sidecar = save_checkpoint(tmp_path / "ck", model, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.safetensors"]
    saved = read_sidecar(sidecar)
    assert saved["format"] == FORMAT and saved["weights"]["file"] == "ck.safetensors"
    assert saved["weights"]["bytes"] == (tmp_path / "ck.safetensors").stat().st_size
    tensors = load_weights(sidecar, saved)
    assert tensors.keys() == model.state_dict().keys()
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    loaded = visiontrain.load(sidecar)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(loaded.logits(x), model.eval()((x.float() - 127.5) / 63.75))


def test_cli_checkpoint_of_another_model_is_one_line(ckpt: Path, tmp_path: Path, main_cli, one_line_error) -> None:
    _edit(ckpt / "best.json", lambda m: m["model"].update(name="mlp"))
    one_line_error(main_cli("evaluate", ckpt / "best.json"), str(ckpt / "best.json"), "do not fit the model")
    one_line_error(main_cli("predict", ckpt / "best.json", tmp_path / "x.png"), "do not fit the model")
    one_line_error(main_cli("evaluate", tmp_path / "missing-run"), "missing-run does not exist")
