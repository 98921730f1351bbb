"""Regression end to end: a `path,value` manifest trains with MSE, is scored by MSE/MAE/RMSE, and predicts values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visiontrain
from visiontrain.cli import main


@pytest.fixture(scope="module")
def brightness_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images whose target is their mean brightness: learnable, and exact to check."""
    root = tmp_path_factory.mktemp("regression")
    (root / "imgs").mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,value"]
    for i in range(240):
        value = float(rng.uniform(0, 1))
        pixels = np.clip(rng.normal(value * 255, 12, size=(16, 16)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "imgs" / f"{i}.png")
        rows.append(f"imgs/{i}.png,{value:.4f}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def regression_run(brightness_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> visiontrain.Run:
    out = tmp_path_factory.mktemp("runs")
    return visiontrain.train({"data": str(brightness_manifest / "data.csv"), "epochs": 12, "lr": 0.01,
                              "data.transforms": {"train": "none"}, "out": str(out), "name": "reg"}, quiet=True)


def test_regression_trains_and_is_scored_by_errors(regression_run: visiontrain.Run) -> None:
    s = regression_run.summary
    assert set(s["final"]) >= {"loss", "mae", "rmse"} and "accuracy" not in s["final"]
    assert s["best"]["monitor"] == "val/loss"
    # Predicting the mean of uniform(0,1) targets gives MAE 0.25; learning brightness must beat it by far.
    assert s["best"]["mae"] < 0.12
    assert abs(s["best"]["rmse"] ** 2 - s["best"]["loss"]) < 1e-9
    meta = json.loads((regression_run.dir / "checkpoints" / "best.json").read_text())
    assert meta["task"] == "regression" and meta["classes"] == ["value"]


def test_regression_evaluate_and_predict(regression_run: visiontrain.Run, brightness_manifest: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    result = visiontrain.evaluate(regression_run.dir, split="val")
    assert result["task"] == "regression" and result["mae"] == pytest.approx(regression_run.summary["best"]["mae"])
    images = [brightness_manifest / "imgs" / f"{i}.png" for i in range(3)]
    predictions = visiontrain.predict(regression_run.dir, images)
    truth = [float(line.split(",")[1]) for line in (brightness_manifest / "data.csv").read_text().splitlines()[1:4]]
    for p, t in zip(predictions, truth, strict=True):
        assert abs(p["predictions"][0]["value"] - t) < 0.25
    assert main(["predict", str(regression_run.dir), str(images[0])]) == 0
    assert capsys.readouterr().out.strip().startswith(f"{images[0]}: ")


def test_classification_loss_on_regression_data_is_a_clear_error(brightness_manifest: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(brightness_manifest / "data.csv"), "--loss", "cross_entropy",
                 "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "regression" in err[0] and "mse" in err[0]
