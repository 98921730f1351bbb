"""What newcomers type first, from the README's peers (Ultralytics, timm's train.py, fastai): their dataset given
as --data-dir, their flags. Each gets one line that says what visiontrain calls it, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("layout", ["classes", "train-val"])
def test_a_dataset_given_as_data_dir_is_one_line_naming_data(tmp_path: Path, shape_folder, main_cli, one_line_error,
                                                              layout: str) -> None:
    root = tmp_path / "pets"
    if layout == "classes":
        shape_folder(root, per_class=1, size=16)
    else:
        shape_folder(root / "train", per_class=1, size=16)
        shape_folder(root / "valid", per_class=1, size=16)
    for command in ("train", "lr-find"):
        one_line_error(main_cli(command, "--data-dir", root, "--no-download"),
                       f"--data-dir {root} holds class folders (", f"use --data {root}")


def test_a_download_cache_as_data_dir_is_still_a_cache(tmp_path: Path, main_cli, one_line_error) -> None:
    raw = tmp_path / "cache" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"")
    line = one_line_error(main_cli("train", "--data-dir", tmp_path / "cache", "--no-download"))
    assert "holds class folders" not in line and "MNIST" in line
