"""results.csv: one row per epoch with every scalar, the same numbers as metrics.jsonl's epoch records, a header
written once, and after a resume every epoch exactly once (test_resume.py compares resumed runs' files too)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import visiontrain
from visiontrain.engine.resume import read_resume


def rows(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (run_dir / "results.csv").open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def epoch_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


def test_one_row_per_epoch_with_every_scalar_of_metrics_jsonl(synthetic_run: visiontrain.Run) -> None:
    columns, table = rows(synthetic_run.dir)
    assert columns[:2] == ["epoch", "step"]
    assert {"train/loss", "train/accuracy", "train/lr", "val/loss", "val/accuracy", "val/top5"} <= set(columns)
    records = epoch_records(synthetic_run.dir)
    assert [int(r["epoch"]) for r in table] == [1, 2, 3] == [r["epoch"] for r in records]
    assert (synthetic_run.dir / "results.csv").read_text().count("epoch,step,") == 1  # the header, once
    for row, record in zip(table, records, strict=True):
        assert set(columns) == set(record) - {"time", "kind"}  # every scalar, nothing else
        for key in columns:
            assert float(row[key]) == record[key], key  # the same float, to the last digit


@pytest.mark.slow  # two processes, the first killed
def test_a_row_written_past_the_resume_point_is_not_listed_twice(tmp_path: Path) -> None:
    """Killed while writing the end-of-epoch-2 resume point: results.csv already has epoch 2, the resume point
    says epoch 1; the resumed process writes epoch 2 again, once."""
    args = ["--data", "synthetic", "--set", "data.args.train=96", "--set", "data.args.val=16", "--set",
            "data.args.test=16", "--set", "data.args.size=16", "--batch-size", "32", "--epochs", "2", "--plots",
            "off", "--quiet", "--name", "killed"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def train(argv: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
        extra = {"VISIONTRAIN_FAULT": fault} if fault else {}
        return subprocess.run([sys.executable, "-m", "visiontrain", "train", *argv], cwd=tmp_path,
                              env={**env, **extra}, capture_output=True, text=True, timeout=300)

    run_dir = tmp_path / "runs" / "killed"
    killed = train(args, "before-rename/resume.safetensors:2")
    assert killed.returncode == -9, killed.stderr
    assert read_resume(run_dir / "checkpoints" / "resume.safetensors")[0]["epoch"] == 1
    assert [r["epoch"] for r in rows(run_dir)[1]] == ["1", "2"]  # epoch 2 logged before the kill
    resumed = train(["--resume", str(run_dir), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    _, table = rows(run_dir)
    assert [r["epoch"] for r in table] == ["1", "2"]
    assert [float(r["train/loss"]) for r in table] == [r["train/loss"] for r in epoch_records(run_dir)]
