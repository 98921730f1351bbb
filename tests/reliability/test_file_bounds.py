"""What a file says is bounded before it is used: JSON nested without end (every file visiontrain parses), a
sidecar whose ``task`` does not fit its weights, a sidecar whose head or input size describes a model of
terabytes (refused from a meta-device build against the weights file's own header, before any allocation),
manifest labels that look like digits or name 10**11 classes, and class names or run names holding terminal
escape sequences (printed escaped, as errors are)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from PIL import Image

import visiontrain
from visiontrain.checkpoint.format import save_checkpoint
from visiontrain.config import DataConfig
from visiontrain.data.manifest import manifest_source
from visiontrain.data.synthetic import make_shapes
from visiontrain.errors import CheckpointError, DataError
from visiontrain.limits import MAX_JSON_DEPTH
from visiontrain.models import ModelInput, create_model

DEEP = "[" * 100_000 + "]" * 100_000  # Python's own JSON parser raises RecursionError on this
CLASSES = ["circle", "square", "triangle", "cross"]  # synthetic's classes, for `evaluate`


def _checkpoint(folder: Path, name: str = "small_cnn", classes: list[str] | None = None, **meta: Any) -> Path:
    """A real checkpoint of an untrained model (its weights and sidecar as training writes them)."""
    classes = classes or CLASSES
    torch.manual_seed(0)
    model = create_model(name, ModelInput(3, 32, len(classes)))
    data = {"name": "synthetic", "args": {"train": 8, "val": 8, "test": 400}}
    base = {"task": "classification", "model": {"name": name, "args": {}, "head": None}, "classes": classes,
            "preprocessing": {"channels": 3, "size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                              "eval_transforms": [{"name": "Resize", "size": [32, 32]}]},
            "config": {"data": data}}
    return save_checkpoint(folder / "best", model, {**base, **meta})


def _edit(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "shape.png"
    Image.fromarray(make_shapes(1, 32, 3, seed=3)[0][0].permute(1, 2, 0).numpy()).save(path)
    return path


# -- the sidecar ---------------------------------------------------------------------------------------------

SIDECARS: dict[str, tuple[Any, list[str]]] = {
    "regression task on a classifier": (lambda m: m.update(task="regression"), ["field 'task'", "one output"]),
    "unknown task": (lambda m: m.update(task="segmentation"), ["field 'task'", "classification or regression"]),
    "head of 2**20 x 2**20": (lambda m: m["model"].update(head=[2**20, 2**20]),
                              ["field 'model.head'", "values but the weights file best.safetensors holds"]),
    "input size 8192": (lambda m: m["preprocessing"].update(size=8192),
                        ["field 'preprocessing.size'", "values but the weights file"]),
}


@pytest.mark.parametrize("case", list(SIDECARS))
def test_sidecars_that_do_not_fit_their_weights_are_refused_before_building(case: str, tmp_path: Path, image: Path,
                                                                            main_cli, one_line_error) -> None:
    change, fragments = SIDECARS[case]
    sidecar = _checkpoint(tmp_path)
    _edit(sidecar, change)
    with pytest.raises(CheckpointError) as caught:
        visiontrain.load(sidecar)
    assert str(sidecar) in str(caught.value) and all(f in str(caught.value) for f in fragments)
    one_line_error(main_cli("predict", sidecar, image), str(sidecar), *fragments)
    one_line_error(main_cli("evaluate", sidecar), str(sidecar), *fragments)


def test_an_input_size_needing_terabytes_of_activations_is_refused(tmp_path: Path, image: Path, main_cli,
                                                                  one_line_error) -> None:
    """vgg_small's weights do not depend on the input size (global pool): the weights file cannot tell, the
    activation estimate (meta-device forward pass) does. 64 images of 8192x8192 would need about a TiB."""
    sidecar = _checkpoint(tmp_path, "vgg_small")
    big = [{"name": "Resize", "size": [8192, 8192]}]  # (evaluate checks its data pipeline on one image first)
    _edit(sidecar, lambda m: m["preprocessing"].update(size=8192, eval_transforms=big))
    listing = tmp_path / "images.txt"
    listing.write_text(f"{image}\n" * 64)
    for argv in (["predict", sidecar, f"@{listing}"], ["evaluate", sidecar]):
        one_line_error(main_cli(*argv), str(sidecar), "'preprocessing.size'", "of activations")


def test_a_small_batch_of_a_large_input_is_still_allowed(tmp_path: Path, image: Path, main_cli) -> None:
    sidecar = _checkpoint(tmp_path, "vgg_small")
    _edit(sidecar, lambda m: m["preprocessing"].update(size=64, eval_transforms=[{"name": "Resize", "size": [64, 64]}]))
    r = main_cli("predict", sidecar, image, "--batch-size", "1")
    assert r.code == 0 and r.out.startswith(str(image)), r.err


# -- JSON nested without end, in every file visiontrain parses ------------------------------------------------

def test_a_deeply_nested_sidecar_is_one_line(tmp_path: Path, image: Path, main_cli, one_line_error) -> None:
    sidecar = _checkpoint(tmp_path)
    text = sidecar.read_text().rstrip()
    sidecar.write_text(text[:-1] + f', "deep": {DEEP}}}')  # the real sidecar with one more key
    with pytest.raises(CheckpointError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        visiontrain.load(sidecar)
    one_line_error(main_cli("predict", sidecar, image), str(sidecar), "nested deeper")


def _folder(root: Path, names: list[str], per_class: int = 3) -> Path:
    images, _ = make_shapes(per_class * len(names), 16, 3, seed=1)
    for i, array in enumerate(images):
        folder = root / names[i % len(names)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


def test_a_deeply_nested_split_file(tmp_path: Path, main_cli, one_line_error) -> None:
    data = _folder(tmp_path / "data", ["a", "b"])
    (tmp_path / "split.json").write_text(DEEP)
    one_line_error(main_cli("data", "info", data, "--set", f"data.split_file={tmp_path / 'split.json'}"),
                   "cannot be read as JSON", "nested deeper")


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_a_deeply_nested_manifest(suffix: str, tmp_path: Path, main_cli, one_line_error) -> None:
    path = tmp_path / f"list{suffix}"
    path.write_text(DEEP + "\n")
    one_line_error(main_cli("data", "info", path), str(path), "nested deeper")


def test_a_deeply_nested_resume_point(tmp_path: Path, main_cli, one_line_error) -> None:
    run = tmp_path / "run"
    assert main_cli("train", "--data", "synthetic", "--data-arg", "train=16", "--data-arg", "val=8",
                    "--data-arg", "test=8", "--epochs", "1", "--quiet", "--out", tmp_path, "--name", "run").code == 0
    resume = run / "checkpoints" / "resume.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, resume, metadata={"visiontrain": DEEP})
    one_line_error(main_cli("train", "--resume", run), str(resume), "nested deeper")


def test_nested_or_mistyped_run_files_do_not_break_the_runs_table(tmp_path: Path, main_cli) -> None:
    for name, summary in (("deep", DEEP), ("typed", json.dumps({"best": 5, "model": "x", "data": [1]}))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("{}\n")
        (tmp_path / name / "summary.json").write_text(summary)
    r = main_cli("runs", tmp_path)
    assert r.code == 0, r.err
    assert {line.split()[0] for line in r.out.splitlines()[1:]} == {"deep", "typed"}


def test_a_deeply_nested_tensor_order(tmp_path: Path, main_cli) -> None:
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"fc.weight": torch.zeros(2, 2)}, path, metadata={"order": DEEP})
    r = main_cli("checkpoint", "inspect", path)
    assert r.code == 0 and "fc.weight" in r.out, r.err  # the order is only a hint: the tensors are fine


# -- manifests -------------------------------------------------------------------------------------------------

@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 80, 120)).save(tmp_path / f"{i}.png")
    return tmp_path


def test_a_label_that_only_looks_like_a_digit_is_a_class_name(pictures: Path) -> None:
    path = pictures / "m.csv"
    path.write_text("path,label\n0.png,0\n1.png,²\n2.png,٣\n3.png,1\n", encoding="utf-8")
    source = manifest_source(path, DataConfig(name=str(path)), 0)
    assert source.classes == ["0", "1", "²", "٣"] and source.splits["train"].labels.tolist() == [0, 2, 3, 1]


@pytest.mark.parametrize(("name", "text"), [("m.csv", "path,label\n0.png,0\n1.png,99999999999\n"),
                                            ("m.jsonl", '{"path": "0.png", "label": 99999999999}\n')])
def test_an_index_label_beyond_the_class_limit_is_refused(name: str, text: str, pictures: Path) -> None:
    path = pictures / name
    path.write_text(text)
    with pytest.raises(DataError, match="label 99999999999 is over the limit of 100,000 classes"):
        manifest_source(path, DataConfig(name=str(path)), 0)


# -- names from files reach the terminal escaped ----------------------------------------------------------------

HOSTILE = ["a\x1b[2J", "b\x07", "c\u2028d", "e"]  # clear screen, bell, a line separator: sorted as a folder lists


def _assert_escaped(text: str) -> None:
    assert not any(ch in text for ch in "\x1b\x07\u2028"), text
    assert "\\x1b[2J" in text and "\\x07" in text and "\\u2028" in text, text


def test_class_names_are_printed_escaped(tmp_path: Path, main_cli) -> None:
    data = _folder(tmp_path / "data", HOSTILE)
    sidecar = _checkpoint(tmp_path / "ckpt", classes=HOSTILE)
    r = main_cli("predict", sidecar, data / HOSTILE[0], "--top-k", "4")
    assert r.code == 0, r.err
    _assert_escaped(r.out)
    r = main_cli("evaluate", sidecar, "--data", data, "--split", "train")
    assert r.code == 0, r.err
    _assert_escaped(r.out)
    r = main_cli("data", "info", data)
    assert r.code == 0, r.err
    _assert_escaped(r.out)


def test_run_names_are_printed_escaped(tmp_path: Path, main_cli) -> None:
    run = tmp_path / "x\x1b[2Jy"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    r = main_cli("runs", tmp_path)
    assert r.code == 0 and "x\\x1b[2Jy" in r.out and "\x1b" not in r.out, r.out
