"""Small data: a few images per class still trains and validates on every class, and a split too small to exist
is one clear line before any run folder is made."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from visiontrain.config import DataConfig
from visiontrain.data import load_source
from visiontrain.data.splits import stratified_split


@pytest.mark.parametrize(("per_class", "held"), [(2, 1), (4, 1), (10, 1), (20, 2)])
def test_stratified_split_holds_out_one_per_class_at_least(per_class: int, held: int) -> None:
    labels = torch.arange(3).repeat_interleave(per_class)
    keep, out = stratified_split(labels, 0.1, seed=0)
    assert Counter(labels[out].tolist()) == dict.fromkeys(range(3), held)
    assert Counter(labels[keep].tolist()) == dict.fromkeys(range(3), per_class - held)


def test_four_images_per_class_trains_and_says_what_was_held_out(tmp_path: Path, shape_folder, main_cli) -> None:
    """4 images per class, no val/: the default val_split 0.1 holds out one per class (was: 0 images, then
    "none of the 0 images could be decoded (see bad_images.txt)")."""
    root = shape_folder(tmp_path / "four", per_class=4, size=16)
    result = main_cli("train", "--data", root, "--epochs", "1", "--no-plots", "--out", tmp_path / "runs",
                      "--name", "four")
    assert result.code == 0, result.err
    first = result.err.splitlines()[:3]
    assert any(line.startswith("note: held out 4 of 16 training images") and "at least one per class" in line
               for line in first), first
    split = json.loads((tmp_path / "runs" / "four" / "split.json").read_text())
    assert sorted(Path(p).parts[0] for p in split["val_paths"]) == ["circle", "cross", "square", "triangle"]
    evaluated = main_cli("evaluate", tmp_path / "runs" / "four")  # only train/: the held-out val split, said so
    assert evaluated.code == 0, evaluated.err
    assert "[val], 4 images" in evaluated.out and "evaluating the val split" in evaluated.err


def test_two_images_per_class_with_test_folder_trains_without_a_traceback(tmp_path: Path, shape_folder,
                                                                         main_cli) -> None:
    """CIFAR-100-like: train/ and test/ with 2 images per class, read from the files (no cache): it was
    `ValueError: no samples were evaluated` after the first epoch, and an orphan run folder."""
    root = tmp_path / "two"
    shape_folder(root / "train", per_class=2, size=16)
    shape_folder(root / "test", per_class=2, size=16, seed=1)
    result = main_cli("train", "--data", root, "--epochs", "1", "--cache", "off", "--no-plots",
                      "--out", tmp_path / "runs", "--name", "two")
    assert result.code == 0, result.err
    summary = json.loads((tmp_path / "runs" / "two" / "summary.json").read_text())
    assert summary["data"]["counts"] == {"train": 4, "val": 4, "test": 8}, summary["data"]


def test_one_image_per_class_is_one_clear_line_and_no_run_folder(tmp_path: Path, shape_folder, main_cli,
                                                                 one_line_error) -> None:
    root = shape_folder(tmp_path / "one", per_class=1, size=16)
    result = main_cli("train", "--data", root, "--epochs", "1", "--out", tmp_path / "runs")
    one_line_error(result, "4 training images", "too few to hold out a validation split", "--val-split 0")
    assert not (tmp_path / "runs").exists()


def test_a_split_file_that_holds_out_nothing_is_one_clear_line(tmp_path: Path, shape_folder, main_cli,
                                                               one_line_error) -> None:
    root = shape_folder(tmp_path / "shapes", per_class=3, size=16)
    record = load_source(DataConfig(name=str(root)), 0).split_record
    split = tmp_path / "split.json"
    split.write_text(json.dumps({**record, "val_indices": [], "val_paths": []}))
    result = main_cli("train", "--data", root, "--split-file", split, "--epochs", "1", "--out", tmp_path / "runs")
    one_line_error(result, "val split has no images")
    assert not (tmp_path / "runs").exists()
