"""Know where time goes: every epoch splits its time into waiting for data and computing, in metrics.jsonl,
TensorBoard and summary.json, and a run whose loader starves the model says so in one line.

Behaviour only: the machine is shared, so no assert compares one duration with another measured one; the
slow loader's sleeps give lower bounds that hold however busy the machine is.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import visiontrain
from visiontrain.engine.timing import DataTimer, LoaderBound, TimeTotals

SPLIT_KEYS = ("train/data_wait_s", "train/compute_s", "train/data_wait_frac")

SLOW_DATASET = '''
import time
import torch

class SlowDigits:
    """48 tiny images that take 25 ms each to "read": a loader that starves any model."""

    def __init__(self, delay=0.025):
        self.delay = delay
        self.targets = [i % 2 for i in range(48)]
        self.classes = ["even", "odd"]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return torch.full((1, 16, 16), 40 + 160 * self.targets[i], dtype=torch.uint8), self.targets[i]
'''


def _slow_items(n: int, delay: float):
    for i in range(n):
        time.sleep(delay)
        yield i


def test_data_timer_counts_the_time_inside_next_and_the_split_adds_up() -> None:
    timer = DataTimer(_slow_items(4, 0.02))
    start = time.perf_counter()
    items = []
    for item in timer:
        items.append(item)
    elapsed = time.perf_counter() - start
    assert items == [0, 1, 2, 3]
    assert timer.waited >= 4 * 0.02  # each sleep happened inside next()
    split = timer.split(elapsed)
    assert split["data_wait_s"] + split["compute_s"] == pytest.approx(elapsed)
    assert 0.0 < split["data_wait_frac"] <= 1.0
    assert DataTimer([]).split(0.0) == {"data_wait_s": 0.0, "compute_s": 0.0, "data_wait_frac": 0.0}


def test_every_epoch_records_the_split_in_metrics_tensorboard_and_summary(synthetic_run: visiontrain.Run) -> None:
    records = [json.loads(line) for line in (synthetic_run.dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 3
    for record in epochs:
        assert all(key in record for key in SPLIT_KEYS), record
        assert record["train/data_wait_s"] + record["train/compute_s"] == pytest.approx(record["train/epoch_time_s"])
        assert 0.0 <= record["train/data_wait_frac"] <= 1.0
    events = EventAccumulator(str(synthetic_run.dir), size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("time/data_wait_s", "time/compute_s", "time/data_wait_frac"):
        assert len(events.Scalars(tag)) == 3, tag
    summary = json.loads((synthetic_run.dir / "summary.json").read_text())
    assert all(key.removeprefix("train/") in summary["train"] for key in SPLIT_KEYS)
    totals = summary["time"]
    assert totals["train_s"] == pytest.approx(sum(r["train/epoch_time_s"] for r in epochs), abs=1e-3)
    assert totals["data_wait_s"] + totals["compute_s"] == pytest.approx(totals["train_s"], abs=1e-3)
    # CPU-seconds of the same span: what a shared machine's other jobs change least (benchmarks/bench_fast.py)
    assert totals["train_cpu_s"] == pytest.approx(sum(r["train/epoch_cpu_s"] for r in epochs), abs=1e-3)
    assert totals["train_cpu_s"] > 0.0


def test_a_starving_loader_prints_one_loader_bound_line_with_the_flag_to_try(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "slow_digits.py").write_text(SLOW_DATASET)
    monkeypatch.chdir(tmp_path)
    run = visiontrain.train({"data": "slow_digits.py:SlowDigits", "data.cache": "off", "workers": 0, "epochs": 2,
                             "batch_size": 16, "normalize": "none", "val_split": 0.25, "out": str(tmp_path / "runs")},
                            quiet=True)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("loader-bound:")]
    assert len(lines) == 1, err  # once per run, though both epochs starve
    assert "waiting for data" in lines[0] and "--workers 4" in lines[0] and "--cache memory" in lines[0]
    train = run.summary["train"]
    assert train["data_wait_s"] >= 36 * 0.025  # 36 training images, each read sleeping 25 ms
    assert train["data_wait_frac"] >= 0.5
    assert run.summary["time"]["data_wait_s"] >= 2 * 36 * 0.025


def _state(frac: float, waited: float, epoch: int = 1) -> SimpleNamespace:
    config = SimpleNamespace(data=SimpleNamespace(cache="auto"))
    return SimpleNamespace(epoch=epoch, config=config,
                           epoch_metrics={"train/data_wait_frac": frac, "train/data_wait_s": waited})


@pytest.mark.parametrize(("frac", "waited", "warns"), [(0.9, 3.0, True), (0.2, 3.0, False), (0.9, 0.1, False)])
def test_the_warning_needs_most_of_the_epoch_and_a_real_wait(frac: float, waited: float, warns: bool) -> None:
    stream = io.StringIO()
    LoaderBound(SimpleNamespace(workers=2), stream).on_epoch_end(_state(frac, waited))
    assert ("loader-bound: " in stream.getvalue()) is warns
    if warns:
        assert "--workers 4" in stream.getvalue()


def test_an_in_memory_loader_gets_advice_about_augmentation_not_workers() -> None:
    stream = io.StringIO()
    LoaderBound(object(), stream).on_epoch_end(_state(0.7, 2.0))  # no `workers`: the in-memory tensor loader
    line = stream.getvalue()
    assert line.startswith("loader-bound: 70% of epoch 1") and "--augment" in line and "--workers" not in line


def test_time_totals_survive_a_resume() -> None:
    totals = TimeTotals()
    metrics = {"train/epoch_time_s": 2.0, "train/epoch_cpu_s": 1.75, "train/data_wait_s": 0.5, "train/compute_s": 1.5}
    totals.on_epoch_end(SimpleNamespace(epoch_metrics=metrics))
    resumed = TimeTotals()
    resumed.load_state_dict(json.loads(json.dumps(totals.state_dict())))  # as the resume checkpoint stores it
    resumed.on_epoch_end(SimpleNamespace(epoch_metrics=metrics))
    assert resumed.summary() == {"train_s": 4.0, "train_cpu_s": 3.5, "data_wait_s": 1.0, "compute_s": 3.0,
                                 "data_wait_frac": 0.25}
