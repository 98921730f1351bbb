"""CSV and JSON-lines manifests: class names or indices, split columns, and regression values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from visiontrain.config import DataConfig
from visiontrain.data import build_data
from visiontrain.data.sources import load_source
from visiontrain.errors import DataError


def _images(folder: Path, n: int, size: int = 12) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        Image.new("RGB", (size, size), (i * 9 % 256, 40, 200)).save(folder / f"{i}.png")
        names.append(f"{folder.name}/{i}.png")
    return names


def _cfg(path: Path, **kw: object) -> DataConfig:
    return DataConfig(name=str(path), **kw)  # type: ignore[arg-type]


def test_csv_with_class_names_relative_paths_and_a_split_column(tmp_path: Path) -> None:
    names = _images(tmp_path / "img", 10)
    rows = ["path,label,split"] + [f"{n},{'bee' if i % 2 else 'ant'},{'test' if i >= 8 else 'train'}"
                                   for i, n in enumerate(names)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    source = load_source(_cfg(tmp_path / "m.csv", val_split=0.25), 0)
    assert source.task == "classification" and source.classes == ["ant", "bee"]
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 6, "val": 2, "test": 2}
    test = source.splits["test"]
    assert [p.name for p in test.paths] == ["8.png", "9.png"] and test.labels.tolist() == [0, 1]
    assert test.paths[0] == tmp_path / "img" / "8.png"  # relative to the manifest's folder
    assert source.size == 12 and source.preset == "cifar"


def test_headerless_csv_with_indices_and_a_root_arg(tmp_path: Path) -> None:
    names = _images(tmp_path / "data" / "x", 6)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m.csv").write_text("".join(f"{n},{i % 3}\n" for i, n in enumerate(names)))
    source = load_source(_cfg(tmp_path / "lists" / "m.csv", val_split=0.0, args={"root": str(tmp_path / "data")}), 0)
    assert source.classes == ["0", "1", "2"] and source.splits["train"].labels.tolist() == [0, 1, 2, 0, 1, 2]
    named = load_source(_cfg(tmp_path / "lists" / "m.csv", val_split=0.0,
                             args={"root": str(tmp_path / "data"), "classes": ["a", "b", "c"]}), 0)
    assert named.classes == ["a", "b", "c"]


def test_jsonl_regression_gives_float_targets_and_a_binned_split(tmp_path: Path) -> None:
    names = _images(tmp_path / "faces", 20)
    lines = [json.dumps({"path": n, "value": 10.0 + 2.5 * i}) for i, n in enumerate(names)]
    (tmp_path / "ages.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    bundle = build_data(_cfg(tmp_path / "ages.jsonl", val_split=0.2, batch_size=4), 0)
    assert bundle.task == "regression" and bundle.target_dtype == torch.float32
    assert bundle.classes == ["value"]  # the one output's name: len(classes) is the model's output count
    val = bundle.source.splits["val"].labels
    assert val.dtype == torch.float32 and len(val) == 4
    assert val.min() < 30 < val.max()  # stratified over value bins: low and high values both held out
    images, targets = next(iter(bundle.loaders["train"]))
    assert targets.dtype == torch.float32 and images.dtype == torch.uint8
    record = json.loads(bundle.artifacts()["split.json"])
    held = bundle.source.splits["val"].paths
    assert sorted(record["val_paths"]) == sorted(str(p.relative_to(tmp_path)) for p in held)


def test_json_list_and_csv_regression(tmp_path: Path) -> None:
    names = _images(tmp_path / "i", 4)
    (tmp_path / "m.json").write_text(json.dumps([{"path": n, "label": "cat"} for n in names]))
    assert load_source(_cfg(tmp_path / "m.json", val_split=0.0), 0).classes == ["cat"]
    (tmp_path / "r.csv").write_text("path,value\n" + "".join(f"{n},{i / 3}\n" for i, n in enumerate(names)))
    source = load_source(_cfg(tmp_path / "r.csv", val_split=0.0), 0)
    assert source.task == "regression"
    assert torch.allclose(source.splits["train"].labels, torch.tensor([0, 1 / 3, 2 / 3, 1.0]))


@pytest.mark.parametrize(("text", "message"), [
    ("path,label\na.png,x\n", "a.png: file not found"),
    ("path,value\ni/0.png,abc\n", "line 2: value 'abc' is not a number"),
    ("path,value\ni/0.png,nan\n", "is not finite"),
    ("path,label,split\ni/0.png,x,holdout\n", "split 'holdout' is not train, val or test"),
    ("path,label,value\ni/0.png,x,1\n", "exactly one of the columns"),
    ("file,label,extra\ni/0.png,x,1\n", "header with a 'path' column"),
    ("path,label\ni/0.png\n", "line 2: expected 2 fields"),
    ("", "has no rows"),
])
def test_manifest_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    _images(tmp_path / "i", 1)
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load_source(_cfg(tmp_path / "m.csv"), 0)


def test_missing_files_follow_the_bad_images_policy(tmp_path: Path) -> None:
    names = _images(tmp_path / "i", 4)
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{n},a\n" for n in names) + "gone.png,a\n")
    with pytest.raises(DataError, match=r"gone\.png: file not found"):
        load_source(_cfg(tmp_path / "m.csv"), 0)
    source = load_source(_cfg(tmp_path / "m.csv", bad_images="skip", val_split=0.0), 0)
    assert len(source.splits["train"]) == 4 and source.bad_images[0][0] == str(tmp_path / "gone.png")


def test_a_path_starting_with_a_tilde_of_no_user_is_a_file_name(tmp_path: Path) -> None:
    """``~0.png`` is a file called so unless a user ``0.png`` exists (as in a shell): it used to escape as pathlib's
    RuntimeError "Could not determine home directory" (found by the manifest fuzz campaign)."""
    _images(tmp_path / "i", 2)
    Image.new("RGB", (12, 12), (9, 9, 9)).save(tmp_path / "~0.png")
    (tmp_path / "m.csv").write_text("path,label\ni/0.png,a\ni/1.png,b\n~0.png,a\n~nobody-here/gone.png,b\n")
    with pytest.raises(DataError, match=r"~nobody-here/gone\.png: file not found"):
        load_source(_cfg(tmp_path / "m.csv"), 0)
    source = load_source(_cfg(tmp_path / "m.csv", bad_images="skip", val_split=0.0), 0)
    assert tmp_path / "~0.png" in source.splits["train"].paths and len(source.splits["train"]) == 3
