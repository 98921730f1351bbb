"""metrics.jsonl: one JSON object per logged step and per epoch, appended and flushed as they happen; and
results.csv: one row per epoch with every scalar, the table Ultralytics' and timm's users look for."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from visiontrain.engine.callbacks import Callback
from visiontrain.engine.metrics import scalar_metrics
from visiontrain.engine.state import TrainState
from visiontrain.fileio import atomic_write_text
from visiontrain.limits import parse_json


class MetricsFile(Callback):
    order = "observe"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = None

    def on_fit_start(self, state: TrainState) -> None:
        if state.resumed_from is not None and self.path.exists():
            self._drop_after(state.step, state.epoch)

    def _drop_after(self, step: int, epoch: int) -> None:
        """A killed run may have logged past its last resume point; those lines will be logged again."""
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = parse_json(line)
            except ValueError:
                continue  # a line cut by the kill
            if not isinstance(record, dict):
                continue  # not a line this file writes
            if record.get("step", 0) <= step and (record.get("kind") != "epoch" or record.get("epoch", 0) <= epoch):
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def _write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self._fh.flush()

    def on_batch_end(self, state: TrainState) -> None:
        if state.log_due():
            self._write({"kind": "step", "epoch": state.epoch + 1, "step": state.step,
                         "train/loss": state.loss_value(), "lr": state.step_lr})

    def on_epoch_end(self, state: TrainState) -> None:
        self._write({"kind": "epoch", "epoch": state.epoch, "step": state.step,
                     **scalar_metrics(state.epoch_metrics)})

    def on_fit_end(self, state: TrainState) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class ResultsFile(Callback):
    """``results.csv``: a header, then one row per finished epoch — ``epoch``, ``step`` and every scalar of the
    epoch (``train/loss``, ``train/accuracy``, ``train/lr``, ``val/loss``, ``val/accuracy`` …), as
    metrics.jsonl's epoch records hold them.

    The columns are those of the first epoch, in its order, and stay so (a key seen only later is in
    metrics.jsonl; one missing later is an empty cell). The file is rewritten whole and atomically each epoch
    — a few kB, once an epoch — so a crash leaves the previous version, never a cut row; a resume keeps the
    rows up to its resume point and goes on from there, so no epoch is ever listed twice.
    """

    order = "observe"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []
        self.rows: list[dict[str, str]] = []

    def on_fit_start(self, state: TrainState) -> None:
        if state.resumed_from is not None and self.path.exists():
            reader = csv.DictReader(io.StringIO(self.path.read_text(encoding="utf-8")))
            self.columns = list(reader.fieldnames or [])
            # the rows a killed process wrote past its resume point come again
            self.rows = [row for row in reader if row.get("epoch", "").isdigit() and int(row["epoch"]) <= state.epoch]

    def on_epoch_end(self, state: TrainState) -> None:
        values = {"epoch": state.epoch, "step": state.step, **scalar_metrics(state.epoch_metrics)}
        if not self.columns:
            self.columns = list(values)
        self.rows.append({k: str(v) for k, v in values.items() if k in self.columns})
        out = io.StringIO()
        writer = csv.DictWriter(out, self.columns, restval="", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, out.getvalue())
