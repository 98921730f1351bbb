"""evaluate: the same numbers training reported for the same checkpoint and split, exact counts, and data
from elsewhere matched to the model's classes by name."""

from __future__ import annotations

from pathlib import Path

import pytest

import visiontrain
from visiontrain.data.synthetic import SHAPES
from visiontrain.errors import DataError


@pytest.fixture(scope="module")
def test_result(synthetic_run: visiontrain.Run) -> dict:
    return visiontrain.evaluate(synthetic_run.dir, split="test")


def test_equals_the_summarys_test_numbers(test_result: dict, synthetic_run) -> None:
    test = synthetic_run.summary["test"]
    assert (test_result["accuracy"], test_result["loss"], test_result["top5"]) == (
        test["accuracy"], test["loss"], test["top5"])
    assert test_result["checkpoint"] == str(synthetic_run.dir / "checkpoints" / "best.json")
    assert (test_result["data"], test_result["split"], test_result["classes"]) == ("synthetic", "test", list(SHAPES))


def test_counts_by_hand(test_result: dict, synthetic_run) -> None:
    confusion = test_result["confusion"]
    total = sum(map(sum, confusion))
    assert total == test_result["count"] == synthetic_run.summary["data"]["counts"]["test"] == 400
    assert [sum(row) for row in confusion] == [100] * 4
    assert test_result["accuracy"] == sum(confusion[i][i] for i in range(4)) / total
    assert test_result["per_class_accuracy"] == [confusion[i][i] / 100 for i in range(4)]
    assert test_result["accuracy"] >= 0.95


def test_val_split_equals_the_best_epochs_validation(synthetic_run) -> None:
    result = visiontrain.evaluate(synthetic_run.dir, split="val")
    best = synthetic_run.summary["best"]
    assert (result["accuracy"], result["loss"], result["top5"]) == (best["accuracy"], best["loss"], best["top5"])
    assert result["count"] == 400


def test_batch_size_does_not_change_the_numbers(test_result: dict, synthetic_run) -> None:
    loaded = visiontrain.load(synthetic_run.dir)
    small = visiontrain.evaluate(loaded, split="test", batch_size=7)  # 400 = 57 * 7 + 1
    assert small["confusion"] == test_result["confusion"]
    assert small["accuracy"] == test_result["accuracy"]
    assert small["loss"] == pytest.approx(test_result["loss"], rel=1e-5)


def test_unknown_split(synthetic_run) -> None:
    with pytest.raises(DataError, match="has no 'holdout' split; it has: train, val, test"):
        visiontrain.evaluate(synthetic_run.dir, split="holdout")


def test_a_folder_of_the_same_classes_in_another_order(tmp_path: Path, synthetic_run, shape_folder) -> None:
    # A folder tree lists classes alphabetically (circle, cross, square, triangle); the model's order differs.
    shape_folder(tmp_path / "shapes" / "test", per_class=5, seed=77)
    (tmp_path / "shapes" / "train").mkdir()
    shape_folder(tmp_path / "shapes" / "train", per_class=1, seed=78)
    result = visiontrain.evaluate(synthetic_run.dir, data=str(tmp_path / "shapes"), split="test")
    assert result["classes"] == list(SHAPES)
    assert [sum(row) for row in result["confusion"]] == [5] * 4
    assert result["accuracy"] >= 0.9  # labels were matched by name: the model sees its own classes


def test_a_folder_with_classes_the_model_does_not_know(tmp_path: Path, synthetic_run, shape_folder) -> None:
    root = shape_folder(tmp_path / "shapes", per_class=2)
    (root / "square").rename(root / "hexagon")
    with pytest.raises(DataError, match="classes the model was not trained on \\(hexagon\\)"):
        visiontrain.evaluate(synthetic_run.dir, data=str(root), split="train")


def test_cli_report(synthetic_run, main_cli) -> None:
    r = main_cli("evaluate", synthetic_run.dir)
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0] == f"{synthetic_run.dir / 'checkpoints' / 'best.json'} on synthetic [test], 400 images"
    assert lines[1].startswith("accuracy ")
    assert "confusion matrix (rows: true class, columns: predicted):" in lines
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1] in ([c] for c in SHAPES)}
    assert set(rows) == set(SHAPES)


def test_cli_errors(synthetic_run, main_cli, one_line_error, tmp_path: Path) -> None:
    one_line_error(main_cli("evaluate", synthetic_run.dir, "--split", "holdout"), "no 'holdout' split")
    one_line_error(main_cli("evaluate", tmp_path / "nope"), "does not exist")
    one_line_error(main_cli("evaluate", synthetic_run.dir, "--data", tmp_path / "nope"), "does not exist")
