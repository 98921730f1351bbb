"""Data sources and loaders: the synthetic set, folder-per-class trees (with and without train/val/test),
the seeded stratified val split, and loaders that visit every sample once per epoch in a seeded order."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import visiontrain
from visiontrain.cli.output import print_train_result
from visiontrain.config import DataConfig
from visiontrain.data import build_data, load_source
from visiontrain.data.sources import stratified_split
from visiontrain.data.synthetic import SHAPES, make_shapes
from visiontrain.errors import DataError

ALPHABETICAL = sorted(SHAPES)  # what a folder tree of the shapes lists


# --- synthetic ----------------------------------------------------------------------------------------------

def test_make_shapes_is_seeded_balanced_uint8() -> None:
    images, labels = make_shapes(40, 24, 3, seed=1)
    assert images.dtype == torch.uint8 and images.shape == (40, 3, 24, 24)
    assert labels.dtype == torch.int64 and Counter(labels.tolist()) == dict.fromkeys(range(4), 10)
    again = make_shapes(40, 24, 3, seed=1)
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)
    assert not torch.equal(make_shapes(40, 24, 3, seed=2)[0], images)
    gray, _ = make_shapes(8, 16, 1, seed=1)
    assert gray.shape == (8, 1, 16, 16)


def test_synthetic_source_splits_are_disjoint() -> None:
    source = load_source(DataConfig(name="synthetic", args={"train": 200, "val": 40, "test": 40, "size": 16}), 0)
    assert source.classes == list(SHAPES) and (source.channels, source.size) == (3, 16)
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 200, "val": 40, "test": 40}
    train = {bytes(img.numpy()) for img in source.splits["train"].images}
    for name in ("val", "test"):
        assert not train & {bytes(img.numpy()) for img in source.splits[name].images}, name
    assert len(source.mean) == 3 and all(0 < s < 1 for s in source.std)


def test_a_split_made_in_one_go_is_make_shapes_itself() -> None:
    """Splits under the chunk size (every test and demo) keep the exact data of earlier releases."""
    source = load_source(DataConfig(name="synthetic", args={"train": 60, "val": 8, "test": 8, "size": 16}), 0)
    images, labels = make_shapes(60, 16, 3, seed=17)
    assert torch.equal(source.splits["train"].images, images) and torch.equal(source.splits["train"].labels, labels)


@pytest.mark.slow  # ~40 M pixels made: 3-10 s on a busy 2-core machine
def test_a_split_larger_than_one_chunk_is_made_chunk_by_chunk() -> None:
    """ResNet-50's 6,144 images of 224 px (benchmarks/gpu.py) were refused; now a split is made in chunks of 2**25
    pixels (here 128 + 2 images of 512 px), every chunk its own, labels balanced within each."""
    source = load_source(DataConfig(name="synthetic", args={"train": 130, "val": 1, "test": 1, "size": 512}), 0)
    train = source.splits["train"]
    assert train.images.shape == (130, 3, 512, 512) and train.images.dtype == torch.uint8
    assert Counter(train.labels[:128].tolist()) == dict.fromkeys(range(4), 32)
    first, _ = make_shapes(128, 512, 3, seed=17)
    assert torch.equal(train.images[:128], first)
    assert not any(torch.equal(train.images[128], img) for img in first[:8])  # the second chunk is not a repeat
    assert int(train.images[128:].float().std()) > 10  # made, not left empty


@pytest.mark.parametrize(("args", "fragment"), [
    ({"colours": 3}, "has no argument 'colours'"),
    ({"channels": 2}, "channels 1 or 3"),
    ({"size": 4}, "size 8 to 1024"),
    ({"test": 0}, "at least 1 image"),
])
def test_synthetic_bad_args(args: dict, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        load_source(DataConfig(name="synthetic", args=args), 0)


def test_unknown_dataset_name() -> None:
    with pytest.raises(DataError, match="unknown dataset 'synthetik'; did you mean synthetic"):
        load_source(DataConfig(name="synthetik"), 0)


# --- stratified split ---------------------------------------------------------------------------------------

def test_stratified_split_holds_out_the_fraction_of_every_class() -> None:
    labels = torch.tensor([0] * 50 + [1] * 20 + [2] * 10 + [3])
    keep, held = stratified_split(labels, 0.2, seed=5)
    assert sorted(keep.tolist() + held.tolist()) == list(range(len(labels)))
    assert Counter(labels[held].tolist()) == {0: 10, 1: 4, 2: 2}  # the single class-3 sample stays in train
    again = stratified_split(labels, 0.2, seed=5)
    assert torch.equal(again[0], keep) and torch.equal(again[1], held)
    assert not torch.equal(stratified_split(labels, 0.2, seed=6)[1], held)


# --- folder-per-class trees ---------------------------------------------------------------------------------

def test_folder_classes_come_from_folder_names(tmp_path: Path, shape_folder) -> None:
    root = shape_folder(tmp_path / "shapes", per_class=10)
    (root / "circle" / "nested").mkdir()
    Image.new("RGB", (20, 10)).save(root / "circle" / "nested" / "deep.jpg")
    (root / "circle" / "readme.txt").write_text("not an image")
    (root / "circle" / ".hidden.png").write_bytes(b"junk")
    (root / ".git").mkdir()
    source = load_source(DataConfig(name=str(root), val_split=0.2), 0)
    assert source.classes == ALPHABETICAL
    everything = source.splits["train"].paths + source.splits["val"].paths
    assert len(everything) == 41 and root / "circle" / "nested" / "deep.jpg" in everything
    for path, label in zip(source.splits["val"].paths, source.splits["val"].labels.tolist(), strict=True):
        assert path.relative_to(root).parts[0] == ALPHABETICAL[label]
    assert Counter(source.splits["val"].labels.tolist()) == {0: 2, 1: 2, 2: 2, 3: 2}  # 20% of 11/10/10/10
    assert any("held out 8 of 41" in note for note in source.notes)


def test_folder_val_split_is_deterministic_per_seed(tmp_path: Path, shape_folder) -> None:
    root = shape_folder(tmp_path / "shapes", per_class=10)

    def val_paths(seed: int) -> list[Path]:
        return load_source(DataConfig(name=str(root), val_split=0.3), seed).splits["val"].paths

    assert val_paths(1) == val_paths(1)
    assert val_paths(1) != val_paths(2)
    assert not set(val_paths(1)) & set(load_source(DataConfig(name=str(root), val_split=0.3), 1).splits["train"].paths)


def test_folder_with_train_val_test_subtrees(tmp_path: Path, shape_folder) -> None:
    root = tmp_path / "shapes"
    shape_folder(root / "train", per_class=6, seed=1)
    shape_folder(root / "val", per_class=2, seed=2)
    shape_folder(root / "test", per_class=3, seed=3)
    source = load_source(DataConfig(name=str(root)), 0)
    assert source.classes == ALPHABETICAL
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 24, "val": 8, "test": 12}
    for split in source.splits.values():
        for path, label in zip(split.paths, split.labels.tolist(), strict=True):
            assert path.parent.name == ALPHABETICAL[label]


def test_folder_with_train_and_test_only_holds_val_out_of_train(tmp_path: Path, shape_folder) -> None:
    root = tmp_path / "shapes"
    shape_folder(root / "train", per_class=5, seed=1)
    shape_folder(root / "test", per_class=2, seed=3)
    source = load_source(DataConfig(name=str(root), val_split=0.2), 0)
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 16, "val": 4, "test": 8}
    assert all(p.is_relative_to(root / "train") for p in source.splits["val"].paths)


@pytest.mark.parametrize(("train", "val", "test"), [
    ("train", "valid", "test"),  # fastai, Roboflow
    ("train", "validation", "testing"),
    ("Training", "Validation", "Test"),  # Windows tools' capitals (fruits-360 writes Training/ and Test/)
])
def test_split_folders_go_by_their_common_names(tmp_path: Path, shape_folder, main_cli, train: str, val: str,
                                                test: str) -> None:
    root = tmp_path / "shapes"
    shape_folder(root / train, per_class=3, seed=1)
    shape_folder(root / val, per_class=1, seed=2)
    shape_folder(root / test, per_class=2, seed=3)
    source = load_source(DataConfig(name=str(root)), 0)
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 12, "val": 4, "test": 8}  # none held out
    assert all(p.is_relative_to(root / val) for p in source.splits["val"].paths)
    said = f"split folders: {train}/ → train, {val}/ → val, {test}/ → test"
    assert said in source.notes
    out = main_cli("data", "info", root).out.splitlines()
    assert out[2].startswith("  train") and out[4].startswith("  test") and out[5] == f"note: {said}"


def test_train_says_which_folder_became_which_split_first(tmp_path: Path, shape_folder, main_cli) -> None:
    root = tmp_path / "shapes"
    shape_folder(root / "train", per_class=3, size=16, seed=1)
    shape_folder(root / "valid", per_class=1, size=16, seed=2)
    r = main_cli("train", "--data", root, "--epochs", "1", "--no-plots", "--out", tmp_path / "runs")
    assert r.code == 0, r.err
    lines = r.err.splitlines()
    assert lines[0].startswith("visiontrain: small_cnn") and "12 train, 4 val;" in lines[0]
    assert lines[1] == "note: split folders: train/ → train, valid/ → val; no test folder (test/ or testing/)"


def test_a_missing_val_folder_is_said_and_held_out(tmp_path: Path, shape_folder) -> None:
    root = tmp_path / "shapes"
    shape_folder(root / "train", per_class=5, seed=1)
    source = load_source(DataConfig(name=str(root), val_split=0.2), 0)
    assert source.notes[0] == ("split folders: train/ → train; no val folder (val/ or valid/ or validation/); no "
                               "test folder (test/ or testing/)")
    assert len(source.splits["val"]) == 4


def test_two_folders_for_one_split_is_one_clear_error(tmp_path: Path, shape_folder, main_cli, one_line_error) -> None:
    root = tmp_path / "shapes"
    for name in ("train", "val", "valid"):
        shape_folder(root / name, per_class=1)
    one_line_error(main_cli("data", "info", root), "2 folders for the val split: val/ and valid/; keep one")


def test_split_names_without_a_train_folder_are_noted_not_classes(tmp_path: Path, shape_folder) -> None:
    root = shape_folder(tmp_path / "shapes", per_class=2)
    shape_folder(root / "test", per_class=1)
    source = load_source(DataConfig(name=str(root), val_split=0.5), 0)
    assert source.classes == ALPHABETICAL
    assert any(n.startswith("test/ in ") and "read only beside a train/ folder" in n for n in source.notes)


def test_test_class_not_in_train(tmp_path: Path, shape_folder) -> None:
    root = tmp_path / "shapes"
    shape_folder(root / "train", per_class=2)
    shape_folder(root / "test", per_class=1)
    (root / "test" / "square").rename(root / "test" / "hexagon")
    with pytest.raises(DataError, match="class 'hexagon' is not among the training classes"):
        load_source(DataConfig(name=str(root)), 0)


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    (tmp_path / "noimages" / "b").mkdir()
    (tmp_path / "noimages" / "b" / "notes.txt").write_text("x")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")  # a file, not a folder
    cases = [(tmp_path / "missing", "does not exist"), (tmp_path / "photo.png", "is a file"),
             (tmp_path / "empty", "has no class sub-folders"), (tmp_path / "noimages", "has no images")]
    for path, fragment in cases:
        with pytest.raises(DataError, match=fragment) as info:
            load_source(DataConfig(name=str(path)), 0)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_cli_data_errors_are_one_line(tmp_path: Path, main_cli, one_line_error) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")  # a file, not a folder
    out = tmp_path / "runs"
    for data, fragment in [("nosuch", "unknown dataset 'nosuch'"), (tmp_path / "missing", "does not exist"),
                           (tmp_path / "photo.png", "is a file"), (tmp_path / "empty", "no class sub-folders"),
                           (tmp_path / "noimages", "has no images")]:
        one_line_error(main_cli("train", "--data", data, "--out", out, "--quiet"), fragment)
    if not torch.cuda.is_available():
        one_line_error(main_cli("train", "--data", "synthetic", "--device", "cuda", "--out", out),
                       "CUDA is not available")
    assert not out.exists()


# --- loaders ------------------------------------------------------------------------------------------------

def _order(loader) -> list[bytes]:
    return [bytes(img.numpy()) for images, _ in loader for img in images]


def test_tensor_loader_visits_every_sample_once_in_a_seeded_order() -> None:
    cfg = DataConfig(name="synthetic", batch_size=16, eval_batch_size=64, args={"train": 50, "val": 20,
                                                                                "test": 20, "size": 8})
    bundle = build_data(cfg, seed=3)
    train = bundle.loaders["train"]
    sizes = [len(labels) for _, labels in train]
    assert sizes == [16, 16, 16, 2] and len(train) == 4
    images, labels = next(iter(train))
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 8, 8) and labels.dtype == torch.int64
    epoch0 = _order(train)
    assert sorted(epoch0) == sorted(bytes(img.numpy()) for img in bundle.source.splits["train"].images)
    assert _order(train) == epoch0  # the same epoch again: the same order
    train.set_epoch(1)
    assert _order(train) != epoch0 and sorted(_order(train)) == sorted(epoch0)
    assert _order(build_data(cfg, seed=4).loaders["train"]) != epoch0
    val = bundle.loaders["val"]
    assert [bytes(i.numpy()) for i in bundle.source.splits["val"].images] == _order(val)  # eval: in order


def test_file_loader_decodes_to_the_model_size(tmp_path: Path, shape_folder) -> None:
    root = shape_folder(tmp_path / "shapes", per_class=5, size=20)
    Image.new("RGBA", (50, 30), (255, 0, 0, 128)).save(root / "circle" / "odd.png")
    cfg = DataConfig(name=str(root), batch_size=8, val_split=0.2, image_size=16)
    bundle = build_data(cfg, seed=0, channels=1)
    assert (bundle.prep.channels, bundle.prep.size) == (1, 16)
    train = bundle.loaders["train"]
    batches = list(train)
    assert [len(labels) for _, labels in batches] == [8, 8, 1]  # 21 files, 4 held out for val
    assert all(images.shape[1:] == (1, 16, 16) and images.dtype == torch.uint8 for images, _ in batches)
    train.set_epoch(0)
    first = torch.cat([labels for _, labels in train])
    assert torch.equal(first, torch.cat([labels for _, labels in batches]))
    assert sorted(first.tolist()) == sorted(bundle.source.splits["train"].labels.tolist())


# --- training on folders ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["flat", "subtrees"])
def test_train_on_a_folder_tree_then_evaluate_its_test_split(tmp_path: Path, shape_folder, layout: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "shapes"
    if layout == "flat":
        shape_folder(root, per_class=12, seed=1, suffix=".jpg")
    else:
        shape_folder(root / "train", per_class=12, seed=1)
        shape_folder(root / "test", per_class=3, seed=2)
    cfg = {"data": {"name": str(root), "image_size": 32, "batch_size": 16, "val_split": 0.25}, "epochs": 2,
           "out": str(tmp_path / "runs"), "name": layout}
    run = visiontrain.train(cfg, quiet=True)
    s = run.summary
    assert s["data"]["classes"] == ALPHABETICAL
    expected = {"train": 36, "val": 12} | ({"test": 12} if layout == "subtrees" else {})
    assert s["data"]["counts"] == expected
    assert s["epochs_completed"] == 2 and s["best"]["split"] == "val"
    loaded = visiontrain.load(run.dir)
    assert loaded.classes == ALPHABETICAL and loaded.prep.size == 32
    samples = sorted((run.dir / "samples").iterdir())
    assert len(samples) == 4 and {p.suffix for p in samples} == {".jpg" if layout == "flat" else ".png"}
    assert all("error" not in r for r in visiontrain.predict(loaded, samples))
    print_train_result(run)  # the closing lines of `visiontrain train`: the predict line names a real sample
    try_it = capsys.readouterr().out.splitlines()[-1].split()
    assert try_it[:3] == ["try", "it:", "visiontrain"] and Path(try_it[-1]) == samples[0]
    if layout == "subtrees":
        result = visiontrain.evaluate(loaded)
        assert result["count"] == 12 and [sum(row) for row in result["confusion"]] == [3] * 4
        assert (result["accuracy"], result["loss"]) == (s["test"]["accuracy"], s["test"]["loss"])
    else:
        with pytest.raises(DataError, match="has no 'test' split"):
            visiontrain.evaluate(loaded, split="test")
        val = visiontrain.evaluate(loaded)  # no test split: the same seeded hold-out as in training
        assert val["split"] == "val" and val["count"] == 12 and val["accuracy"] == s["best"]["accuracy"]
