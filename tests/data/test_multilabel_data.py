"""Multi-label data: every manifest form (a labels column split on | or ;, one 0/1 column per label, JSON lists),
a folder tree whose images sit in several class folders, the synthetic set, the iterative split and `data info`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from visiontrain.config import DataConfig
from visiontrain.data import build_data
from visiontrain.data.audit import describe, format_report
from visiontrain.data.sources import load_source
from visiontrain.data.splits import iterative_split

# Five images and their labels: what every manifest form below writes.
LABELS = [["cat", "dog"], ["dog"], [], ["bird", "cat"], ["cat"]]
CLASSES = ["bird", "cat", "dog"]
EXPECTED = [[0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 0]]


def _images(folder: Path, n: int = 5, shade: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (12, 12), (i * 40, 90 + shade, 200)).save(folder / f"{i}.png")
    return [f"{folder.name}/{i}.png" for i in range(n)]


def _write(tmp_path: Path, form: str) -> Path:
    names = _images(tmp_path / "img")
    if form == "csv-pipe":
        text = "path,labels\n" + "".join(f"{n},{'|'.join(ls)}\n" for n, ls in zip(names, LABELS, strict=True))
        return _save(tmp_path / "m.csv", text)
    if form == "csv-semicolon":
        text = "path,labels\n" + "".join(f'{n},"{" ; ".join(ls)}"\n' for n, ls in zip(names, LABELS, strict=True))
        return _save(tmp_path / "m.csv", text)
    if form == "csv-columns":
        text = "path,bird,cat,dog\n" + "".join(f"{n},{','.join(str(int(c in ls)) for c in CLASSES)}\n"
                                               for n, ls in zip(names, LABELS, strict=True))
        return _save(tmp_path / "m.csv", text)
    records = [{"path": n, "labels": ls} for n, ls in zip(names, LABELS, strict=True)]
    if form == "jsonl":
        return _save(tmp_path / "m.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return _save(tmp_path / "m.json", json.dumps(records))


def _save(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("form", ["csv-pipe", "csv-semicolon", "csv-columns", "jsonl", "json"])
def test_every_manifest_form_gives_the_same_multi_hot_targets(tmp_path: Path, form: str) -> None:
    source = load_source(DataConfig(name=str(_write(tmp_path, form)), val_split=0.0), 0)
    assert source.task == "multilabel" and source.classes == CLASSES
    train = source.splits["train"]
    assert train.labels.dtype == torch.float32 and train.labels.tolist() == EXPECTED
    assert [p.name for p in train.paths] == [f"{i}.png" for i in range(5)]


def test_a_multilabel_manifest_batches_label_rows(tmp_path: Path) -> None:
    bundle = build_data(DataConfig(name=str(_write(tmp_path, "csv-pipe")), val_split=0.0, batch_size=5), 0)
    images, labels = next(iter(bundle.loaders["train"]))
    assert images.shape == (5, 3, 12, 12) and labels.shape == (5, 3) and labels.dtype == torch.float32


@pytest.mark.parametrize(("case", "fragments"), [
    ("unknown", ["line 2", "label 'dog' is not in the data arg classes"]),
    ("empty", ["line 4", "has no labels", "empty=error"]),
    ("outside", ["line 3", "leads outside the data root"]),
    ("not-01", ["line 2", "column 'dog'", "0 or 1"]),
])
def test_bad_multilabel_manifests_are_one_line_errors(tmp_path: Path, case: str, fragments: list[str], main_cli,
                                                      one_line_error) -> None:
    manifest = _write(tmp_path, "csv-columns" if case == "not-01" else "csv-pipe")
    args: list[str] = []
    if case == "unknown":
        args = ["--data-arg", "classes=[bird, cat]"]
    elif case == "empty":
        args = ["--data-arg", "empty=error"]
    elif case == "outside":  # a root given: every relative path must stay inside it
        manifest.write_text("path,labels\nimg/0.png,cat\n../../0.png,dog\n", encoding="utf-8")
        args = ["--data-arg", f"root={tmp_path}"]
    else:
        manifest.write_text("path,bird,cat,dog\nimg/0.png,0,1,yes\n", encoding="utf-8")
    result = main_cli("data", "info", manifest, *args)
    one_line_error(result, *fragments)


def test_a_folder_tree_with_copies_in_several_class_folders_is_multilabel_by_content(tmp_path: Path) -> None:
    """Copies are matched by their bytes: the same name with other content is another image."""
    root = tmp_path / "tree"
    _images(root / "cat", 3)
    _images(root / "dog", 1, shade=50)
    shutil.copy(root / "cat" / "0.png", root / "dog" / "cat-and-dog.png")  # one image, two labels
    Image.new("RGB", (12, 12), (1, 2, 3)).save(root / "dog" / "1.png")  # same name as cat/1.png, other pixels
    source = load_source(DataConfig(name=str(root), val_split=0.0, args={"multilabel": "true"}), 0)
    assert source.task == "multilabel" and source.classes == ["cat", "dog"]
    train = source.splits["train"]
    rows = {p.relative_to(root).as_posix(): y for p, y in zip(train.paths, train.labels.tolist(), strict=True)}
    assert rows == {"cat/0.png": [1.0, 1.0], "cat/1.png": [1.0, 0.0], "cat/2.png": [1.0, 0.0],
                    "dog/0.png": [0.0, 1.0], "dog/1.png": [0.0, 1.0]}
    plain = load_source(DataConfig(name=str(root), val_split=0.0), 0)
    assert plain.task == "classification" and len(plain.splits["train"]) == 6


def test_the_synthetic_multilabel_set_has_two_to_four_of_six_shapes(tmp_path: Path) -> None:
    source = load_source(DataConfig(name="synthetic_multilabel", args={"train": 64, "val": 16, "test": 16}), 0)
    assert source.task == "multilabel" and len(source.classes) == 6
    per_image = source.splits["train"].labels.sum(dim=1)
    assert int(per_image.min()) >= 2 and int(per_image.max()) <= 4


def test_iterative_split_puts_a_rare_label_into_val() -> None:
    """One label on 3 of 200 images: the per-row stratified split of classification would not see it."""
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(200, 5, generator=gen) < 0.4).float()
    y[:, 4] = 0
    y[[10, 50, 90], 4] = 1
    keep, held = iterative_split(y, 0.2, seed=3)
    assert len(held) == 40 and len(keep) == 160 and set(keep.tolist()).isdisjoint(held.tolist())
    assert y[held, 4].sum() >= 1 and y[keep, 4].sum() >= 1
    share = y[held].sum(0) / y.sum(0)
    assert torch.all((share[:4] - 0.2).abs() < 0.05), share
    again = iterative_split(y, 0.2, seed=3)
    assert torch.equal(again[1], held)


def test_data_info_counts_labels_cooccurrence_and_unlabelled_images(tmp_path: Path) -> None:
    report = describe(load_source(DataConfig(name=str(_write(tmp_path, "jsonl")), val_split=0.0), 0))
    train = report["splits"]["train"]
    assert train["per_class"] == {"bird": 1, "cat": 3, "dog": 2}
    assert train["without_labels"] == 1 and train["cooccurrence"] == [[1, 1, 0], [1, 3, 1], [0, 1, 2]]
    text = format_report(report)
    assert "classes (3): bird, cat, dog" in text and "1 image(s) without any label" in text
    assert "co-occurrence in train" in text
