"""``--data hf:NAME_OR_PATH``: Hugging Face datasets built with ``datasets`` itself and saved into tmp (never the
Hub: the offline switches are set before ``datasets`` is imported)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# datasets reads its switches once, when it is imported: no Hub, and no writes into ~/.cache. They are set for that
# import only and put back: left in the environment, they would turn off the Hub (served on 127.0.0.1) for every
# later test in the session, and huggingface_hub, imported first here, freezes them too.
pytest.importorskip("huggingface_hub.constants")  # the package loads lazily: its constants module reads them
_SWITCHES = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "HF_DATASETS_CACHE": tempfile.mkdtemp(prefix="visiontrain-hf-cache-")}
_SAVED = {key: os.environ.get(key) for key in _SWITCHES}
if "datasets" not in sys.modules:
    os.environ.update({key: os.environ.get(key) or value for key, value in _SWITCHES.items()})
try:
    datasets = pytest.importorskip("datasets")
finally:
    for _key, _value in _SAVED.items():
        if _value is None:
            os.environ.pop(_key, None)
        else:
            os.environ[_key] = _value

from visiontrain.config import DataConfig  # noqa: E402
from visiontrain.config.trust import check_file_values, names_code  # noqa: E402
from visiontrain.data import build_data  # noqa: E402
from visiontrain.data.sources import ItemSplit, load_source  # noqa: E402
from visiontrain.data.synthetic import MULTI_SHAPES, SHAPES, make_multi_shapes, make_shapes  # noqa: E402
from visiontrain.errors import DataError, VisiontrainError  # noqa: E402


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def shapes_table(count: int, seed: int, *, label: str = "label", regression: bool = False) -> datasets.Dataset:
    """``count`` 16-px shape images as PNG bytes, an ``Image`` column, a ``ClassLabel`` (or float) and a text column."""
    images, labels = make_shapes(count, 16, 3, seed=seed)
    cells = [{"bytes": png(image.permute(1, 2, 0).numpy()), "path": None} for image in images]
    if regression:
        values = [float(image.float().mean() / 255) for image in images]
        features = datasets.Features({"image": datasets.Image(), label: datasets.Value("float32"),
                                      "note": datasets.Value("string")})
        return datasets.Dataset.from_dict({"image": cells, label: values, "note": ["x"] * count}, features=features)
    features = datasets.Features({"image": datasets.Image(), label: datasets.ClassLabel(names=list(SHAPES)),
                                  "note": datasets.Value("string")})
    return datasets.Dataset.from_dict({"image": cells, label: labels.tolist(), "note": ["x"] * count},
                                      features=features)


def save_splits(root: Path, make: Callable[[int, int], datasets.Dataset], train: int, other: int) -> Path:
    """A save_to_disk folder with the Hub's split names: train, validation and test (``make(count, seed)``)."""
    datasets.DatasetDict({"train": make(train, 1), "validation": make(other, 2),
                          "test": make(other, 3)}).save_to_disk(str(root))
    return root


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes: train (48), validation (12), test (12)."""
    return save_splits(tmp_path_factory.mktemp("hf") / "shapes", shapes_table, 48, 12)


def write_layout(kind: str, root: Path) -> Path:
    """The same small set written the ways ``hf:`` reads offline."""
    if kind == "parquet file":
        shapes_table(24, 1).to_parquet(str(root / "train.parquet"))
        return root / "train.parquet"
    if kind == "parquet folder":  # as on the Hub: the split in the file name
        (root / "data").mkdir()
        shapes_table(24, 1).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
        shapes_table(8, 2).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
        return root
    shapes_table(24, 1).save_to_disk(str(root / "one"))  # one Dataset, not a DatasetDict: its train split
    return root / "one"


def test_saved_dataset_gives_classes_splits_and_shape(saved: Path) -> None:
    source = load_source(DataConfig(name=f"hf:{saved}"), seed=0)
    assert source.classes == list(SHAPES)  # from the ClassLabel feature
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 48, "val": 12, "test": 12}  # validation → val
    assert (source.channels, source.size, source.task) == (3, 16, "classification")
    train = source.splits["train"]
    assert isinstance(train, ItemSplit)
    assert train.labels.tolist() == make_shapes(48, 16, 3, seed=1)[1].tolist()
    # The stored PNG bytes, decoded by visiontrain's own decoder: the very pixels that were saved.
    image = np.asarray(train.dataset[5])
    assert np.array_equal(image, make_shapes(48, 16, 3, seed=1)[0][5].permute(1, 2, 0).numpy())
    assert "validation → val" in source.notes[0] and "'image'" in source.notes[0] and "'label'" in source.notes[0]


@pytest.mark.parametrize("kind", ["parquet file", "parquet folder", "single dataset"])
def test_offline_layouts(kind: str, tmp_path: Path) -> None:
    path = write_layout(kind, tmp_path)
    bundle = build_data(DataConfig(name=f"hf:{path}", batch_size=8, val_split=0.25), seed=0)
    assert bundle.classes == list(SHAPES)
    assert len(bundle.source.splits["train"]) + len(bundle.source.splits["val"]) == 24  # val held out of train
    assert ("test" in bundle.source.splits) == (kind == "parquet folder")
    images, labels = next(iter(bundle.loaders["train"]))
    assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, 16, 16) and len(labels) == 8


def test_columns_named_by_data_args_and_float_label_is_regression(tmp_path: Path) -> None:
    shapes_table(24, 1, label="brightness", regression=True).save_to_disk(str(tmp_path / "r"))
    cfg = DataConfig(name=f"hf:{tmp_path / 'r'}", args={"image": "image", "label": "brightness"}, val_split=0.25)
    source = load_source(cfg, seed=0)
    assert source.task == "regression" and source.classes == ["value"]
    assert source.splits["train"].labels.dtype == torch.float32
    assert 0 < float(source.splits["train"].labels.mean()) < 1


def test_train_evaluate_predict(saved: Path, tmp_path: Path, main_cli) -> None:
    """The CLI end to end; the run's sidecar names the hf: source, and evaluate reads it from there (no --data)."""
    trained = main_cli("train", "--data", f"hf:{saved}", "--epochs", "1", "--batch-size", "16", "--no-plots",
                       "--out", tmp_path / "runs")
    assert trained.code == 0, trained.err
    run = next((tmp_path / "runs").iterdir())
    evaluated = main_cli("evaluate", run, "--split", "val")
    assert evaluated.code == 0, evaluated.err
    assert "circle" in evaluated.out
    picture = tmp_path / "x.png"
    Image.fromarray(make_shapes(1, 16, 3, seed=9)[0][0].permute(1, 2, 0).numpy()).save(picture)
    predicted = main_cli("predict", run, picture)
    assert predicted.code == 0, predicted.err
    assert any(name in predicted.out for name in SHAPES)


@pytest.mark.parametrize(("args", "fragments"), [
    (["--data-arg", "label=nope"], ["no column 'nope'", "image, label, note"]),
    (["--data-arg", "image=note"], ["column 'note' holds Value, not images"]),
    (["--data-arg", "train=nope"], ["no split 'nope'", "train, validation, test"]),
    (["--data-arg", "colour=red"], ["no argument 'colour'"]),
])
def test_bad_columns_and_splits_are_one_line(saved: Path, args: list[str], fragments: list[str], main_cli,
                                             one_line_error, tmp_path: Path) -> None:
    result = main_cli("train", "--data", f"hf:{saved}", *args, "--epochs", "1", "--out", tmp_path)
    one_line_error(result, *fragments)


def test_no_hub_and_not_a_dataset_are_one_line(tmp_path: Path, main_cli, one_line_error) -> None:
    one_line_error(main_cli("train", "--data", "hf:no-such-set-here", "--out", tmp_path), "cannot load it")
    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(main_cli("train", "--data", f"hf:{tmp_path / 'notes.txt'}", "--out", tmp_path),
                   "neither a .parquet nor an .arrow file")


def test_no_download_reads_the_cache_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--no-download`` is offline for Hub names even where HF_HUB_OFFLINE is not set (simulated here)."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with pytest.raises(DataError, match=r"cannot load it: .*OfflineModeIsEnabled"):
        load_source(DataConfig(name="hf:visiontrain-test/not-cached", download=False), seed=0)
    assert datasets.config.HF_HUB_OFFLINE is False  # put back


def test_images_go_through_the_guarded_decoder(tmp_path: Path) -> None:
    """A bomb and a broken image in the table: refused from the header (the row named), or skipped and listed."""
    cells = [{"bytes": png(np.zeros((16, 16, 3), np.uint8)), "path": None} for _ in range(6)]
    cells[2] = {"bytes": png(np.zeros((300, 300, 3), np.uint8)), "path": None}  # 90,000 pixels > --max-pixels
    cells[4] = {"bytes": b"<html>not found</html>", "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    datasets.Dataset.from_dict({"image": cells, "label": [0, 1] * 3}, features=features).save_to_disk(
        str(tmp_path / "bad"))
    name = f"hf:{tmp_path / 'bad'}"
    with pytest.raises(DataError, match=r"bad/train\[2\]: decompression bomb"):
        load_source(DataConfig(name=name, max_pixels=10_000, val_split=0), seed=0)
    source = load_source(DataConfig(name=name, max_pixels=10_000, val_split=0, bad_images="skip"), seed=0)
    assert len(source.splits["train"]) == 4
    assert [row.rsplit("/", 1)[1] for row, _ in source.bad_images] == ["train[2]", "train[4]"]


def test_unlabelled_test_split_is_left_out(tmp_path: Path) -> None:
    """Hub test splits often carry label -1 (hidden answers): left out with a note, not trained or scored on."""
    test = shapes_table(6, 3)
    test = test.cast_column("label", datasets.Value("int64")).map(lambda row: {"label": -1})
    test = test.cast_column("label", datasets.ClassLabel(names=list(SHAPES)))
    datasets.DatasetDict({"train": shapes_table(24, 1), "test": test}).save_to_disk(str(tmp_path / "s"))
    source = load_source(DataConfig(name=f"hf:{tmp_path / 's'}", val_split=0.25), seed=0)
    assert "test" not in source.splits
    assert any("test split has no labels" in note for note in source.notes)


def test_missing_extra_is_one_line(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: import fails
    with pytest.raises(VisiontrainError, match=r"pip install 'visiontrain\[hf\]'"):
        load_source(DataConfig(name=f"hf:{saved}"), seed=0)


@pytest.mark.parametrize("name", ["hf:cifar10", "hf:beans"])
def test_a_run_file_naming_hf_is_data_not_code(name: str) -> None:
    """``hf:cifar10`` looks like ``module:Name``, but names data: a run's sidecar may name it (no --trust-code)."""
    assert not names_code(name)
    check_file_values({"data": {"name": name, "args": {"label": "label", "streaming": "true"}}}, "sidecar.json")


def _epoch_labels(loader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return [int(v) for _, labels in loader for v in labels]


def test_streaming_reads_every_item_once_per_epoch_in_a_seeded_order(tmp_path: Path) -> None:
    """``streaming=true``: a stream, not a table in memory — each epoch reads every training item once, through a
    shuffle buffer seeded by (seed, epoch): the same seed gives the same stream, another epoch another order."""
    images = make_shapes(64, 16, 3, seed=1)[0]
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": png(im.permute(1, 2, 0).numpy()), "path": None} for im in images],
         "label": list(range(64))},  # the label is the row: the stream's order is visible in the labels
        features=datasets.Features({"image": datasets.Image(),
                                    "label": datasets.ClassLabel(names=[str(i) for i in range(64)])}))
    datasets.DatasetDict({"train": table, "validation": shapes_table(8, 2).cast_column(
        "label", datasets.ClassLabel(names=[str(i) for i in range(64)]))}).save_to_disk(str(tmp_path / "s"))
    cfg = DataConfig(name=f"hf:{tmp_path / 's'}", args={"streaming": "true", "buffer": "16"}, batch_size=10)
    bundle = build_data(cfg, seed=0)
    loader = bundle.loaders["train"]
    assert type(loader).__name__ == "StreamLoader" and len(loader) == 7 and loader.num_samples == 64
    first, again, second = _epoch_labels(loader, 0), _epoch_labels(loader, 0), _epoch_labels(loader, 1)
    assert sorted(first) == sorted(second) == list(range(64))  # every item once per epoch
    assert first == again and first != second and first != list(range(64))  # seeded, moves with the epoch
    assert first == _epoch_labels(build_data(cfg, seed=0).loaders["train"], 0)  # a rerun reads the same stream
    batch, _ = next(iter(loader))
    assert batch.dtype == torch.uint8 and tuple(batch.shape[1:]) == (3, 64, 64)
    loader.set_epoch(1, start_batch=4)  # resuming mid-epoch: the same stream, the batches done dropped
    assert [int(v) for _, labels in loader for v in labels] == second[40:]


def test_streaming_ranks_decode_disjoint_parts_of_every_global_batch(tmp_path: Path) -> None:
    """Under torchrun each process reads the same stream and keeps (decodes) its part of every global batch: the
    parts are disjoint, together they are the one-process batches, pixel for pixel (augmentation seeded per item)."""
    images = make_shapes(40, 16, 3, seed=1)[0]
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": png(im.permute(1, 2, 0).numpy()), "path": None} for im in images],
         "label": list(range(40))},
        features=datasets.Features({"image": datasets.Image(),
                                    "label": datasets.ClassLabel(names=[str(i) for i in range(40)])}))
    datasets.DatasetDict({"train": table, "validation": table.select(range(8))}).save_to_disk(str(tmp_path / "s"))
    cfg = DataConfig(name=f"hf:{tmp_path / 's'}", args={"streaming": "true", "buffer": "8"}, batch_size=10,
                     transforms={"train": "cifar"})

    def batches(rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = build_data(cfg, seed=0).loaders["train"]
        loader.shard(rank, world)
        loader.set_epoch(1)
        return list(loader)

    whole, first, second = batches(0, 1), batches(0, 2), batches(1, 2)
    assert len(whole) == len(first) == len(second) == 4
    for (x, y), (x0, y0), (x1, y1) in zip(whole, first, second, strict=True):
        assert y0.tolist() + y1.tolist() == y.tolist() and len(y0) == len(y1) == 5
        assert torch.equal(torch.cat([x0, x1]), x)
    with pytest.raises(DataError, match="batch size 10 is not divisible by 3 processes"):
        build_data(cfg, seed=0).loaders["train"].shard(0, 3)


def test_streaming_trains_and_evaluates(saved: Path, tmp_path: Path, main_cli) -> None:
    trained = main_cli("train", "--data", f"hf:{saved}", "--data-arg", "streaming=true", "--epochs", "1",
                       "--batch-size", "16", "--image-size", "16", "--no-plots", "--out", tmp_path / "runs")
    assert trained.code == 0, trained.err
    assert "streamed (shuffle buffer 10,000 images)" in trained.err
    run = next((tmp_path / "runs").iterdir())
    evaluated = main_cli("evaluate", run, "--split", "test")
    assert evaluated.code == 0, evaluated.err
    assert "circle" in evaluated.out


def test_streaming_without_a_validation_split_is_one_line(tmp_path: Path, main_cli, one_line_error) -> None:
    shapes_table(8, 1).to_parquet(str(tmp_path / "train.parquet"))
    result = main_cli("train", "--data", f"hf:{tmp_path / 'train.parquet'}", "--data-arg", "streaming=true",
                      "--out", tmp_path)
    one_line_error(result, "has no validation split", "--val-split 0")


@pytest.mark.parametrize("streaming", ["false", "true"])
def test_data_info(saved: Path, streaming: str, main_cli) -> None:
    result = main_cli("data", "info", f"hf:{saved}", "--data-arg", f"streaming={streaming}")
    assert result.code == 0, result.err
    assert "classes (4): circle, square, triangle, cross" in result.out
    assert ("train       48  circle" in result.out) == (streaming == "false")  # a stream's labels are not read
    assert "validation → val" in result.out


def multilabel_table(count: int, seed: int) -> datasets.Dataset:
    """``count`` 32-px images with 2-4 of six shapes each and a ``Sequence(ClassLabel)`` column listing them."""
    images, hot = make_multi_shapes(count, 32, 3, seed=seed)
    cells = [{"bytes": png(image.permute(1, 2, 0).numpy()), "path": None} for image in images]
    present = [row.nonzero().flatten().tolist() for row in hot]
    features = datasets.Features({"image": datasets.Image(),
                                  "objects": datasets.Sequence(datasets.ClassLabel(names=list(MULTI_SHAPES)))})
    return datasets.Dataset.from_dict({"image": cells, "objects": present}, features=features)


@pytest.fixture(scope="module")
def saved_multilabel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_splits(tmp_path_factory.mktemp("hf-multi") / "shapes", multilabel_table, 96, 24)


def test_a_list_of_class_labels_is_a_multilabel_set(saved_multilabel: Path) -> None:
    """The label column is found by its feature (a list of ClassLabel values), the classes come from it, and each
    image's labels become a multi-hot row: the very shapes drawn in it."""
    source = load_source(DataConfig(name=f"hf:{saved_multilabel}"), seed=0)
    assert source.task == "multilabel" and source.classes == list(MULTI_SHAPES)
    train = source.splits["train"]
    assert train.labels.dtype == torch.float32 and tuple(train.labels.shape) == (96, len(MULTI_SHAPES))
    assert torch.equal(train.labels, make_multi_shapes(96, 32, 3, seed=1)[1])
    assert "'objects'" in source.notes[0]


@pytest.mark.parametrize("streaming", ["false", "true"])
def test_multilabel_trains_evaluates_and_predicts(saved_multilabel: Path, streaming: str, tmp_path: Path,
                                                  main_cli) -> None:
    trained = main_cli("train", "--data", f"hf:{saved_multilabel}", "--data-arg", f"streaming={streaming}",
                       "--epochs", "2", "--batch-size", "16", "--image-size", "32", "--no-plots",
                       "--out", tmp_path / "runs")
    assert trained.code == 0, trained.err
    run = next((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert "map" in summary["best"] and "exact_match" in summary["test"], summary["best"]  # multi-label metrics
    evaluated = main_cli("evaluate", run, "--split", "test", "--json")
    assert evaluated.code == 0, evaluated.err
    report = json.loads(evaluated.out)
    assert report["task"] == "multilabel" and report["classes"] == list(MULTI_SHAPES) and report["count"] == 24
    picture = tmp_path / "x.png"
    Image.fromarray(make_multi_shapes(1, 32, 3, seed=9)[0][0].permute(1, 2, 0).numpy()).save(picture)
    predicted = main_cli("predict", run, picture, "--json")
    assert predicted.code == 0, predicted.err
    assert predicted.out.strip(), predicted.err


def test_a_multilabel_index_outside_the_classes_is_one_line(tmp_path: Path) -> None:
    """``datasets`` refuses such a row when building a set, but a parquet file's features are only its metadata: one
    whose ClassLabel lists fewer names than its rows use (edited, or written by another tool) is read as it is."""
    pq = pytest.importorskip("pyarrow.parquet")
    multilabel_table(8, 1).to_parquet(str(tmp_path / "train.parquet"))
    table = pq.read_table(tmp_path / "train.parquet")
    meta = json.loads(table.schema.metadata[b"huggingface"])
    label = meta["info"]["features"]["objects"]
    (label.get("feature") or label)["names"] = ["circle", "square"]  # the rows use all six shapes
    pq.write_table(table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()}),
                   tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r"row \d+ holds label \[.*\], outside its 2 classes"):
        load_source(DataConfig(name=f"hf:{tmp_path / 'train.parquet'}", val_split=0.25), seed=0)


@pytest.mark.slow  # three real processes (torchrun and its two ranks) and one more for the single-process run
def test_two_processes_streaming_equal_one_process(saved: Path, tmp_path: Path) -> None:
    """torchrun with ``streaming=true``: each process decodes its part of every global batch; together they train
    the weights one process trains (a model without batch norm, whose statistics are per process)."""
    import safetensors.torch

    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}

    def argv(name: str) -> list[str]:
        return ["-m", "visiontrain", "train", "--data", f"hf:{saved}", "--data-arg", "streaming=true", "--data-arg",
                "buffer=16", "--model", "lenet5", "--image-size", "32", "--epochs", "2", "--batch-size", "8",
                "--workers", "0", "--lr", "0.01", "--plots", "off", "--device", "cpu", "--quiet", "--out",
                str(tmp_path), "--name", name]

    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *argv("two")], capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, *argv("one"), "--threads", "1"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (safetensors.torch.load_file(tmp_path / n / "checkpoints" / "last.safetensors") for n in ("one", "two"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
