"""`visiontrain checkpoint inspect|convert`: formats, shapes, metadata, which model fits, DDP/compile prefixes
stripped into safetensors + JSON, and full-model pickles refused with one line (never unpickled)."""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
import torchvision
from torch import nn

from visiontrain.models import ModelInput, create_model
from visiontrain.models.partial import load_partial
from visiontrain.models.rebuild import read_model_weights


def _ddp_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    sd = torchvision.models.mobilenet_v3_small(num_classes=7).state_dict()
    path = tmp_path / "ddp.pth"
    torch.save({"epoch": 5, "state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}}, path)
    return path, sd


def test_inspect_a_wrapped_state_dict(tmp_path: Path, main_cli) -> None:
    path, sd = _ddp_file(tmp_path)
    r = main_cli("checkpoint", "inspect", path, "--tensors", "2")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[1] == (f"format:    pytorch (nested under 'state_dict'; 'module.' stripped from {len(sd)} keys; "
                        f"'_orig_mod.' stripped from {len(sd)} keys)")
    assert lines[2].startswith(f"tensors:   {len(sd)} (") and "float32 (" in lines[2] and "int64 (" in lines[2]
    assert "fits:      mobilenet_v3_small (exact, 7 classes, 3 channels)" in lines
    assert [line.split() for line in lines[-3:]] == [["features.0.0.weight", "16x3x3x3", "float32"],
                                                     ["features.0.1.weight", "16", "float32"],
                                                     [f"… {len(sd) - 2} more (--tensors 0 lists all)"][0].split()]
    info = json.loads(main_cli("checkpoint", "inspect", path, "--json").out)
    assert info["format"] == "pytorch" and info["tensors"] == len(sd)
    assert info["table"][0] == {"name": "features.0.0.weight", "shape": [16, 3, 3, 3], "dtype": "float32"}


def test_convert_strips_prefixes_and_writes_a_sidecar(tmp_path: Path, main_cli, one_line_error) -> None:
    path, sd = _ddp_file(tmp_path)
    r = main_cli("checkpoint", "convert", path, "--to", "safetensors")
    assert r.code == 0, r.err
    out = tmp_path / "ddp.safetensors"
    assert r.out.splitlines()[0].startswith(f"wrote {out} ({len(sd)} tensors")
    assert "use it: visiontrain train --model mobilenet_v3_small --pretrained" in r.out
    tensors = safetensors.torch.load_file(str(out))
    assert set(tensors) == set(sd) and all(torch.equal(tensors[k], v) for k, v in sd.items())
    side = json.loads((tmp_path / "ddp.json").read_text())
    assert side["format"] == "visiontrain.weights" and side["stripped_prefixes"] == {"module.": len(sd),
                                                                                       "_orig_mod.": len(sd)}
    assert side["weights"]["file"] == "ddp.safetensors" and side["fits"][0]["name"] == "mobilenet_v3_small"
    assert read_model_weights(out).ordered  # the state_dict order survives, so --init-match order still works
    one_line_error(main_cli("checkpoint", "convert", path, "--to", "safetensors"), "exists", "--force")
    one_line_error(main_cli("checkpoint", "convert", out, "--to", "safetensors"), "is already safetensors")


def test_full_model_pickle_is_refused_in_one_line(tmp_path: Path, main_cli, one_line_error) -> None:
    path = tmp_path / "vgg16_method1.pth"  # seed 004's "保存方式1": torch.save(model)
    torch.save(nn.Sequential(nn.Linear(3, 2)), path)
    for command in (["inspect"], ["convert", "--to", "safetensors"]):
        r = main_cli("checkpoint", command[0], path, *command[1:])
        one_line_error(r, "not a plain state_dict", "torch.save(model.state_dict(), path)")
    assert not (tmp_path / "vgg16_method1.safetensors").exists()


def test_inspect_a_visiontrain_run_rebuilds_its_model(tmp_path: Path, main_cli) -> None:
    from visiontrain.checkpoint.format import save_checkpoint

    model = create_model("lenet5", ModelInput(1, 28, 3))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    meta = {"model": {"name": "lenet5", "args": {}, "head": [8]}, "classes": ["a", "b", "c"],
            "preprocessing": {"channels": 1, "size": 28, "mean": [0.5], "std": [0.2]}, "epoch": 2}
    from visiontrain.models.surgery import replace_head

    replace_head(model, 3, [8])
    save_checkpoint(tmp_path / "run" / "checkpoints" / "best", model, meta)
    r = main_cli("checkpoint", "inspect", tmp_path / "run")
    assert r.code == 0, r.err
    assert "fits:      lenet5 (the model its sidecar names; `visiontrain.load` rebuilds it exactly)" in r.out
    assert 'metadata:  model: {"name": "lenet5", "args": {}, "head": [8]}' in r.out
    # the safetensors file alone still knows its state_dict order (from the sidecar's model)
    weights = read_model_weights(tmp_path / "run" / "checkpoints" / "best.safetensors")
    assert weights.ordered and list(weights.tensors) == list(model.state_dict())
    report = load_partial(create_model("lenet5", ModelInput(1, 28, 3)), weights.tensors, match="order")
    assert len(report.loaded) == 8 and [m["key"] for m in report.mismatched] == ["11.weight"]  # the new head
