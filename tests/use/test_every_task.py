"""Every use command works for every task the project trains (``TASKS`` in tests/conftest.py): evaluate,
evaluate --report, predict, export and serve's /predict, on a small trained run of each task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import visiontrain

# What each task's answers hold: the headline metric evaluate prints, the report's own key, a prediction's key.
EXPECT = {"classification": {"metric": "accuracy", "report": "macro", "prediction": "probability"},
          "regression": {"metric": "mae", "report": "r2", "prediction": "value"},
          "multilabel": {"metric": "mAP", "report": "per_label", "prediction": "probability"}}


def _task(run: visiontrain.Run) -> str:
    final = run.summary["final"]
    return "regression" if final.get("mae") is not None else "multilabel" if "map" in final else "classification"


def _image(run: visiontrain.Run) -> Path:
    return sorted((run.dir / "samples").iterdir())[0]  # a held-out image the run wrote as a file


def test_evaluate_cli(task_run: visiontrain.Run, main_cli) -> None:
    result = main_cli("evaluate", task_run.dir, "--split", "val")
    assert result.code == 0, result.err
    assert f"{EXPECT[_task(task_run)]['metric']} " in result.out
    as_json = json.loads(main_cli("evaluate", task_run.dir, "--split", "val", "--json").out)
    assert as_json["task"] == _task(task_run) and as_json["count"] == task_run.summary["data"]["counts"]["val"]


def test_evaluate_report_cli(task_run: visiontrain.Run, main_cli, tmp_path: Path) -> None:
    result = main_cli("evaluate", task_run.dir, "--split", "val", "--report", tmp_path / "report")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["count"] == task_run.summary["data"]["counts"]["val"]
    assert EXPECT[_task(task_run)]["report"] in report
    for name in report["files"].values():
        assert (tmp_path / "report" / name).stat().st_size > 0, name


def test_predict_cli_and_api(task_run: visiontrain.Run, main_cli) -> None:
    image = _image(task_run)
    result = main_cli("predict", task_run.dir, image, "--json")
    assert result.code == 0, result.err
    (answer,) = json.loads(result.out)
    assert EXPECT[_task(task_run)]["prediction"] in answer["predictions"][0]
    assert visiontrain.predict(task_run.dir, [image])[0]["predictions"] == answer["predictions"]


def test_export_predicts_like_the_checkpoint(task_run: visiontrain.Run, main_cli, tmp_path: Path) -> None:
    out = tmp_path / "model.torchscript.pt"  # (the quickest format to write; ONNX is tested in test_export.py)
    assert main_cli("export", task_run.dir, "--format", "torchscript", "--out", out).code == 0
    image = _image(task_run)
    key = EXPECT[_task(task_run)]["prediction"]
    exported = visiontrain.predict(out, [image])[0]["predictions"][0][key]
    assert exported == pytest.approx(visiontrain.predict(task_run.dir, [image])[0]["predictions"][0][key], abs=1e-4)


def test_serve_predict(task_run: visiontrain.Run) -> None:
    pytest.importorskip("fastapi")
    from visiontrain.use.serve import build_app, running_server
    from visiontrain.use.serve.client import call

    image = _image(task_run)
    with running_server(build_app(task_run.dir)) as url:
        status, answer, _ = call(url, "POST", "/predict", body=image.read_bytes(),
                                 headers={"Content-Type": "image/png"})
    assert status == 200, answer
    key = EXPECT[_task(task_run)]["prediction"]
    assert answer["predictions"][0][key] == visiontrain.predict(task_run.dir, [image])[0]["predictions"][0][key]


def test_evaluate_defaults_to_the_held_out_split_the_run_reported(task_run: visiontrain.Run, main_cli) -> None:
    """Without --split: test when the data has one (synthetic), else the val split held out of train (the
    regression manifest has only train rows) — which was "dataset … has no 'test' split"."""
    expected = "test" if "test" in task_run.summary["data"]["counts"] else "val"
    result = main_cli("evaluate", task_run.dir, "--json")
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert answer["split"] == expected and answer["count"] == task_run.summary["data"]["counts"][expected]
    assert f"evaluating the {expected} split" in result.err


def test_the_loaded_model_is_callable(task_run: visiontrain.Run) -> None:
    """``visiontrain.load(run)(images)`` gives logits: uint8 pixels are normalized as in training, a float batch
    is taken as normalized input, one image gives one row."""
    model = visiontrain.load(task_run.dir, device="cpu")
    side = model.prep.size
    batch = torch.randint(0, 256, (2, model.prep.channels, side, side), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    logits = model(batch)
    outputs = 1 if _task(task_run) == "regression" else len(model.classes)
    assert logits.shape == (2, outputs) and not logits.requires_grad
    assert torch.equal(logits, model.logits(batch))
    torch.testing.assert_close(model(model.prep.normalizer()(batch)), logits)
    torch.testing.assert_close(model(batch[0]), logits[0])


def test_a_lone_safetensors_loads_predicts_and_evaluates(task_run: visiontrain.Run, tmp_path: Path, main_cli) -> None:
    """best.safetensors copied without best.json: the sidecar's fields travel in its header."""
    lone = tmp_path / "model.safetensors"
    lone.write_bytes((task_run.dir / "checkpoints" / "best.safetensors").read_bytes())
    image = _image(task_run)
    assert visiontrain.predict(lone, [image])[0]["predictions"] == visiontrain.predict(task_run.dir, [image])[0][
        "predictions"]
    loaded = visiontrain.load(lone)
    assert loaded.path == lone and loaded.classes == visiontrain.load(task_run.dir).classes
    result = main_cli("evaluate", lone, "--split", "val", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["count"] == task_run.summary["data"]["counts"]["val"]
