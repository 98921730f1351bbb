"""Fine-tuning end to end through the CLI: a small pretrained-style checkpoint with 4 classes → a 3-class folder
dataset with --pretrained and with --init-from, the backbone frozen, then predict. The commands run in this
process (``main_cli``: the same ``main(argv)`` a process runs, without paying PyTorch's import four times);
tests/test_cli.py runs train and predict as real processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from visiontrain.models import ModelInput, create_model

MODEL = ["--model", "cifar_resnet20", "--set", "model.args.width=8"]
COMMON = [*MODEL, "--freeze-backbone", "--epochs", "2", "--batch-size", "16", "--image-size", "16",
          "--schedule", "cosine", "--lr", "0.01", "--out", "runs"]


def test_finetune_a_pretrained_style_checkpoint_to_a_new_class_count(tmp_path: Path, shape_folder, main_cli,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    pretrained = create_model("cifar_resnet20", ModelInput(3, 16, 4), {"width": 8})  # 4 classes
    torch.save(pretrained.state_dict(), tmp_path / "pre.pth")
    data = shape_folder(tmp_path / "shapes", per_class=20, size=16)
    shutil.rmtree(data / "cross")  # the new task has 3 classes
    monkeypatch.chdir(tmp_path)
    exe = ["train", "--data", data, *COMMON]
    runs = {"pre": main_cli(*exe, "--pretrained", "pre.pth", "--name", "pre"),
            "init": main_cli(*exe, "--init-from", "pre.pth", "--name", "init")}
    for result in runs.values():
        assert result.code == 0, result.err
    assert "pretrained: pre.pth; head 'fc' replaced for 3 classes" in runs["pre"].err
    backbone = [p for n, p in pretrained.named_parameters() if not n.startswith("fc.")]
    assert f"frozen: {len(backbone)} parameter tensors ({sum(p.numel() for p in backbone):,} values); training 99" \
        in runs["pre"].err  # 32x3 + 3: only the new head trains
    init_line = next(line for line in runs["init"].err.splitlines() if line.startswith("init from pre.pth"))
    assert init_line.endswith("0 missing, 0 unexpected, 2 with another shape")
    assert "shape differs: fc.weight (3, 32) in the model, fc.weight (4, 32) in the file" in runs["init"].err
    report = json.loads((tmp_path / "runs" / "init" / "init_report.json").read_text())
    assert [m["key"] for m in report["mismatched"]] == ["fc.weight", "fc.bias"] and not report["complete"]

    original = pretrained.state_dict()
    for name in ("pre", "init"):
        trained = safetensors.torch.load_file(str(tmp_path / "runs" / name / "checkpoints" / "last.safetensors"))
        for key, value in original.items():  # the frozen backbone is the file's, bit for bit, BN stats too
            if not key.startswith("fc."):
                assert torch.equal(trained[key], value), (name, key)
        assert trained["fc.weight"].shape == (3, 32)
        sidecar = json.loads((tmp_path / "runs" / name / "checkpoints" / "last.json").read_text())
        assert sidecar["model"] == {"name": "cifar_resnet20", "args": {"width": 8}, "head": None}

    image = sorted((data / "square").glob("*.png"))[0]
    predict = {n: main_cli("predict", f"runs/{n}", image, "--json") for n in ("pre", "init")}
    for result in predict.values():
        assert result.code == 0, result.err
        labels = [p["label"] for p in json.loads(result.out)[0]["predictions"]]
        assert sorted(labels) == ["circle", "square", "triangle"]
