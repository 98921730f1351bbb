"""``visiontrain data list|info|show|stats`` and the data flags of ``train``, as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from visiontrain import cli
from visiontrain.config import DataConfig
from visiontrain.data.sources import channel_stats, load_source

VT = [sys.executable, "-m", "visiontrain"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VT, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def _tree(root: Path) -> Path:
    """train/val/test folders; one image copied from train into test (leakage), one duplicated within train."""
    for split, n in (("train", 8), ("val", 2), ("test", 2)):
        for c, colour in (("ant", 30), ("bee", 200)):
            (root / split / c).mkdir(parents=True)
            for i in range(n if c == "ant" else max(1, n // 4)):
                Image.new("RGB", (12 + i, 12), (colour, 5 * i + 50 * len(split), 90)).save(
                    root / split / c / f"{i}.png")
    shutil.copy(root / "train" / "ant" / "3.png", root / "test" / "ant" / "copy.png")
    shutil.copy(root / "train" / "ant" / "1.png", root / "train" / "ant" / "again.png")
    return root


def test_data_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    expected = {"mnist", "synthetic", "cifar10", "cifar100", "fashion_mnist", "kmnist", "PATH/", "module:Class"}
    assert expected <= set(rows)
    assert rows["synthetic"]["here"] == "made on the fly"


def test_data_info_reports_counts_imbalance_and_leakage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tree(tmp_path / "d")
    assert cli.main(["data", "info", str(root)]) == 0
    text = capsys.readouterr().out
    assert "train       11  ant 9, bee 2" in text
    assert "LEAKAGE across splits: 1 group(s)" in text
    assert f"train: {root / 'train' / 'ant' / '3.png'} = test: {root / 'test' / 'ant' / 'copy.png'}" in text
    assert "duplicates within a split: 1 group(s)" in text
    assert "imbalanced: class 'ant' has 9 training images, 4.5x the 2 of 'bee'" in text
    assert cli.main(["data", "info", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["test"]["per_class"] == {"ant": 3, "bee": 1}
    assert report["images"]["modes"] == {"RGB": 18} and report["images"]["formats"] == {"PNG": 18}
    assert len(report["duplicates"]["across_splits"]) == 1


def test_data_stats_matches_the_tensors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "stats", "synthetic", "--data-arg", "train=30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    source = load_source(DataConfig(name="synthetic", args={"train": 30}), 0)
    mean, std = channel_stats(source.splits["train"].images)
    assert result["images"] == len(source.splits["train"]) and result["mean"] == list(mean)
    assert result["std"] == list(std)


def test_data_show_writes_a_png_and_tensorboard_images(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "show", str(root), "--augment", "--count", "6", "--image-size", "24",
                     "--out", "shown"]) == 0
    out = capsys.readouterr().out
    png = tmp_path / "shown" / "d-train-augmented.png"
    assert str(png.relative_to(tmp_path)) in out and "training augmentation" in out
    with Image.open(png) as img:
        assert img.mode == "RGB" and img.width > 3 * 96 and img.height > 2 * 96  # tiles enlarged to >= 96 px
    events = EventAccumulator(str(tmp_path / "shown"))
    events.Reload()
    tags = events.Tags()["images"]
    assert "data/d-train-augmented" in tags and "data/d-train-augmented_labelled" in tags


def test_train_flags_skip_bad_images_and_reuse_a_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "d"
    for c in ("ant", "bee"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (14, 14), (40 if c == "ant" else 220, 9 * i, 60)).save(root / c / f"{i}.png")
    (root / "bee" / "oops.jpg").write_text("<html>not found</html>")
    common = ["train", "--data", str(root), "--epochs", "1", "--image-size", "16", "--batch-size", "4",
              "--out", str(tmp_path / "runs"), "--quiet"]
    failed = _run(common, tmp_path)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith(f"visiontrain: error: {root / 'bee' / 'oops.jpg'}: ")
    # The CLI's exit code and one-line error needed a real process; the runs themselves go in-process (faster).
    assert cli.main([*common, "--bad-images", "skip", "--name", "one", "--val-split", "0.34", "--augment", "cifar",
                     "--normalize", "imagenet"]) == 0
    run = tmp_path / "runs" / "one"
    assert (run / "bad_images.txt").read_text().startswith(f"{root / 'bee' / 'oops.jpg'}\tnot an image")
    split = json.loads((run / "split.json").read_text())
    saved = (run / "config.yaml").read_text()
    assert "transforms:\n    train: cifar" in saved and "normalize: imagenet" in saved
    assert cli.main([*common, "--bad-images", "skip", "--name", "two", "--seed", "7",
                     "--split-file", str(run / "split.json")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "runs" / "two" / "split.json").read_text())["val_paths"] == split["val_paths"]


def test_data_arg_flag_sets_dataset_arguments() -> None:
    args = cli.build_parser().parse_args(["train", "--data", "my.py:MyData", "--data-arg", "root_dir=data/train",
                                          "--data-arg", "n=3", "--no-download", "--bad-images", "skip"])
    cfg = cli.config_from_args(args)
    assert cfg.data.args == {"root_dir": "data/train", "n": 3}
    assert cfg.data.download is False and cfg.data.bad_images == "skip"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--data-arg", "novalue"])
