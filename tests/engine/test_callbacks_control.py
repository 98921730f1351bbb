"""Callbacks that steer training: a real Ctrl-C (SIGINT to a real training process) stops cleanly with a
mid-epoch resume point and prints the resume command, and the resume finishes the run; early stopping
with patience records why it stopped and its counters survive a resume; StopTraining from a user
callback keeps the progress, and resuming it ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import safetensors.torch
import torch

import visiontrain
from visiontrain.engine.callbacks import Callbacks, StopTraining
from visiontrain.engine.control import EarlyStopping, GracefulInterrupt
from visiontrain.engine.distributed import SINGLE
from visiontrain.engine.resume import read_resume

# The real CLI; --plots off: the per-epoch matplotlib pictures cost ~2 s per epoch here and have nothing to do
# with stopping or resuming (the resume reads the setting back from the run's config.yaml).
LAUNCH = [sys.executable, "-m", "visiontrain"]
# 1200 images in batches of 32: 38 steps per epoch, 76 in all; no periodic checkpoints, so the only
# mid-epoch resume point is the one Ctrl-C writes.
CTRL_C = ["--data", "synthetic", "--set", "data.args.train=1200", "--set", "data.args.val=100",
          "--set", "data.args.test=50", "--set", "data.args.size=16", "--batch-size", "32", "--epochs", "2",
          "--set", "train.log_every=1", "--device", "cpu", "--plots", "off"]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("VISIONTRAIN_FAULT", None)
    return env


def _steps(path: Path) -> list[int]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if record.get("kind") == "step":
            out.append(record["step"])
    return out


def test_ctrl_c_checkpoints_mid_epoch_prints_the_resume_command_and_the_resume_finishes(tmp_path: Path) -> None:
    run_dir = Path("runs") / "C"
    proc = subprocess.Popen([*LAUNCH, "train", *CTRL_C, "--name", "C"], cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while len(_steps(tmp_path / run_dir / "metrics.jsonl")) < 3:  # the handler is installed by then
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no training steps logged in time"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stopped: interrupted (Ctrl-C)" in out
    assert f"resume with: visiontrain train --resume {shlex.quote(str(run_dir))}" in out
    meta, _ = read_resume(tmp_path / run_dir / "checkpoints" / "resume.safetensors")
    assert 0 < meta["batch_in_epoch"] < 38, meta["batch_in_epoch"]  # saved mid-epoch, at a step boundary
    stopped = json.loads((tmp_path / run_dir / "summary.json").read_text(encoding="utf-8"))
    assert stopped["stop_reason"] == "interrupted (Ctrl-C)" and stopped["stopped_early"]
    assert stopped["steps"] == meta["step"] == max(_steps(tmp_path / run_dir / "metrics.jsonl"))

    resumed = subprocess.run([*LAUNCH, "train", "--resume", str(run_dir), "--quiet"],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"batch {meta['batch_in_epoch']} (step {meta['step']}); sample stream verified" in resumed.stderr
    done = json.loads((tmp_path / run_dir / "summary.json").read_text(encoding="utf-8"))
    assert done["steps"] == 76 and done["epochs_completed"] == 2 and done["stop_reason"] == ""
    assert _steps(tmp_path / run_dir / "metrics.jsonl") == list(range(1, 77))


def test_graceful_interrupt_first_ctrl_c_requests_a_stop_the_second_interrupts() -> None:
    guard, state = GracefulInterrupt(), SimpleNamespace(dist=SINGLE, device=torch.device("cpu"))
    previous = signal.getsignal(signal.SIGINT)
    guard.on_fit_start(state)  # type: ignore[arg-type]
    try:
        assert signal.getsignal(signal.SIGINT) == guard._handler
        guard.on_batch_end(state)  # type: ignore[arg-type]  # nothing requested: trains on
        guard._handler(signal.SIGINT, None)
        with pytest.raises(StopTraining, match="interrupted"):
            guard.on_batch_end(state)  # type: ignore[arg-type]
        with pytest.raises(KeyboardInterrupt):
            guard._handler(signal.SIGINT, None)
    finally:
        guard.on_fit_end(state)  # type: ignore[arg-type]
    assert signal.getsignal(signal.SIGINT) == previous


def _config(out: Path, name: str, **train: Any) -> dict[str, Any]:
    return {"data": {"name": "synthetic", "batch_size": 32, "args": {"train": 256, "val": 64, "test": 32, "size": 16}},
            "train": {"log_every": 1, "device": "cpu", "plots": False, **train}, "out": str(out), "name": name}


def test_early_stopping_stops_after_patience_and_its_counters_survive_a_resume(tmp_path: Path) -> None:
    # a rate too small to change the validation accuracy: epoch 1 stays the best
    config = _config(tmp_path, "early", epochs=8, early_stop_patience=2)
    config["optim"] = {"name": "sgd", "lr": 1e-7, "schedule": "none"}
    run = visiontrain.train(config, quiet=True)
    s = run.summary
    assert s["epochs_completed"] == 3 and s["stopped_early"]
    assert s["stop_reason"] == "early stop: val/accuracy has not improved for 2 epochs (best at epoch 1)"
    assert s["best"]["epoch"] == 1
    meta, _ = read_resume(run.dir / "checkpoints" / "resume.safetensors")
    assert (meta["epoch"], meta["batch_in_epoch"]) == (3, 0)
    assert meta["callbacks"]["EarlyStopping"] == {"bad_epochs": 2, "best_epoch": 1}  # after epoch 3, not before
    again = visiontrain.train(resume=run.dir, quiet=True)  # one more bad epoch is one too many
    assert again.summary["epochs_completed"] == 4
    assert again.summary["stop_reason"].endswith("has not improved for 3 epochs (best at epoch 1)")


def test_callback_state_goes_to_and_comes_from_the_chain_by_class_name() -> None:
    stopper = EarlyStopping(3)
    stopper.bad_epochs, stopper.best_epoch = 2, 5
    chain = Callbacks([stopper, GracefulInterrupt()])
    assert chain.state_dict() == {"EarlyStopping": {"bad_epochs": 2, "best_epoch": 5}}
    fresh = EarlyStopping(3)
    Callbacks([fresh]).load_state_dict(json.loads(json.dumps(chain.state_dict())))
    assert (fresh.bad_epochs, fresh.best_epoch) == (2, 5)


def test_a_user_stop_keeps_the_progress_and_resuming_ends_where_an_uninterrupted_run_ends(tmp_path: Path,
                                                                                         stop_at) -> None:
    whole = visiontrain.train(_config(tmp_path, "whole", epochs=2), quiet=True)
    stopped = visiontrain.train(_config(tmp_path, "stopped", epochs=2), callbacks=[stop_at(11)], quiet=True)
    assert stopped.summary["stop_reason"] == "enough for now" and stopped.summary["steps"] == 11
    meta, _ = read_resume(stopped.dir / "checkpoints" / "resume.safetensors")
    assert (meta["epoch"], meta["batch_in_epoch"], meta["step"]) == (1, 3, 11)  # 8 steps per epoch
    resumed = visiontrain.train(resume=stopped.dir, quiet=True)
    assert resumed.summary["steps"] == whole.summary["steps"] == 16
    assert resumed.summary["final"] == whole.summary["final"]
    a = safetensors.torch.load_file(whole.dir / "checkpoints" / "last.safetensors")
    b = safetensors.torch.load_file(resumed.dir / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
