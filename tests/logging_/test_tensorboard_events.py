"""The event files a run writes, read back with TensorBoard's own reader: every tag, the right number of
points at the right steps, values equal to metrics.jsonl's; the image grid and the graph."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import visiontrain

EVERYTHING = {"compressedHistograms": 0, "images": 0, "audio": 0, "scalars": 0, "histograms": 0, "tensors": 0,
              "graph": 0, "meta_graph": 0}


@pytest.fixture(scope="module")
def events(synthetic_run: visiontrain.Run) -> EventAccumulator:
    files = list(synthetic_run.dir.glob("events.out.tfevents.*"))
    assert len(files) == 1
    acc = EventAccumulator(str(synthetic_run.dir), size_guidance=EVERYTHING)
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def records(synthetic_run: visiontrain.Run) -> dict[str, list[dict]]:
    lines = (synthetic_run.dir / "metrics.jsonl").read_text().splitlines()
    parsed = [json.loads(line) for line in lines]
    return {kind: [r for r in parsed if r["kind"] == kind] for kind in ("step", "epoch")}


def _points(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_every_scalar_tag_is_there(events: EventAccumulator) -> None:
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "val/accuracy", "val/top5", "time/epoch_s",
            "time/img_per_s", "train/accuracy", "train/epoch_loss"} <= tags


def test_step_scalars_equal_the_step_records(events, records, synthetic_run) -> None:
    steps = records["step"]
    log_every = synthetic_run.config.train.log_every
    assert [r["step"] for r in steps] == list(range(log_every, synthetic_run.summary["steps"] + 1, log_every))
    for tag, key in (("train/loss", "train/loss"), ("train/lr", "lr")):
        points = _points(events, tag)
        assert [s for s, _ in points] == [r["step"] for r in steps], tag
        assert [v for _, v in points] == pytest.approx([r[key] for r in steps], rel=1e-6), tag  # float32 in TB


@pytest.mark.parametrize(("tag", "key"), [
    ("val/loss", "val/loss"), ("val/accuracy", "val/accuracy"), ("val/top5", "val/top5"),
    ("time/epoch_s", "train/epoch_time_s"), ("time/img_per_s", "train/img_per_s"),
    ("train/accuracy", "train/accuracy"), ("train/epoch_loss", "train/loss"),
])
def test_epoch_scalars_equal_the_epoch_records(events, records, synthetic_run, tag: str, key: str) -> None:
    epochs = records["epoch"]
    assert len(epochs) == synthetic_run.summary["epochs_completed"] == 3
    points = _points(events, tag)
    assert len(points) == 3
    # one point per epoch, at the global step the epoch ended on
    assert [s for s, _ in points] == [r["step"] for r in epochs]
    assert [v for _, v in points] == pytest.approx([r[key] for r in epochs], rel=1e-6)


def test_a_grid_of_training_images(events: EventAccumulator, synthetic_run) -> None:
    assert "train/batch" in events.Tags()["images"]
    (image,) = events.Images("train/batch")
    assert image.step == 1
    assert image.width * image.height >= 32 * 32 * 32  # a grid of (at least) 32 images of 32x32
    assert image.encoded_image_string.startswith(b"\x89PNG")


def test_the_model_graph(events: EventAccumulator) -> None:
    assert events.Tags()["graph"] is True
    graph = events.Graph()
    ops = {node.op for node in graph.node}
    assert len(graph.node) > 10
    assert any("conv" in op.lower() for op in ops), ops


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> visiontrain.Run:
    """2 epochs of 3 steps each, with log_every at its default of 100: fewer steps than one logging interval."""
    config = {"data": {"name": "synthetic", "batch_size": 32, "args": {"train": 96, "val": 16, "test": 16, "size": 16}},
              "train": {"epochs": 2, "plots": False}, "out": str(tmp_path_factory.mktemp("runs")), "name": "short"}
    return visiontrain.train(config, quiet=True)


def test_plots_off_writes_no_model_graph(short_run: visiontrain.Run) -> None:
    """--plots off draws nothing, the graph included (tracing it took ~0.5 s of a 1-epoch --recipe fast run)."""
    acc = EventAccumulator(str(short_run.dir), size_guidance=EVERYTHING)
    acc.Reload()
    assert acc.Tags()["graph"] is False
    assert acc.Tags()["images"] == []


def test_a_short_run_logs_loss_lr_and_grad_norm_once_per_epoch(short_run: visiontrain.Run) -> None:
    assert short_run.config.train.log_every > short_run.summary["steps"] == 6
    acc = EventAccumulator(str(short_run.dir), size_guidance=EVERYTHING)
    acc.Reload()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/epoch_lr"):
        assert [s for s, _ in _points(acc, tag)] == [3, 6], tag  # each epoch's last step
    records = [json.loads(line) for line in (short_run.dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [3, 6]  # metrics.jsonl logs the same steps
    assert [v for _, v in _points(acc, "train/loss")] == pytest.approx([r["train/loss"] for r in steps], rel=1e-6)
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [v for _, v in _points(acc, "train/epoch_lr")] == pytest.approx([r["train/lr"] for r in epochs], rel=1e-6)
