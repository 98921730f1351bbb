"""Data-parallel training with real processes: torchrun, gloo on the CPU.

Two processes with the same global batch and seed end with the weights of one process (float tolerance),
report the exact global validation figures, write one set of logs and checkpoints (default tier); a two-process
run killed mid-training resumes in one process, and a batch the processes cannot share is one line (slow tier).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import visiontrain

ARGS = ["--data", "synthetic", "--model", "lenet5", "--epochs", "2", "--batch-size", "64", "--schedule", "cosine",
        "--set", "data.args.train=500", "--set", "data.args.val=101", "--set", "data.args.test=100",
        "--checkpoint-every", "3", "--quiet"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "VISIONTRAIN_FAULT")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _torchrun(out: Path, name: str, nproc: int, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "visiontrain", "train", *ARGS, "--out", str(out), "--name", name, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env or _env())


def _single(out: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "visiontrain", "train", *ARGS, "--threads", "1", "--out", str(out),
               "--name", name, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=_env())


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / "last.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    two = _torchrun(out, "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _single(out, "one")
    assert one.returncode == 0, one.stderr[-3000:]
    return out


def test_two_processes_equal_one_process(runs: Path) -> None:
    one, two = _weights(runs / "one"), _weights(runs / "two")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    s1 = json.loads((runs / "one" / "summary.json").read_text())
    s2 = json.loads((runs / "two" / "summary.json").read_text())
    assert s2["final"]["accuracy"] == s1["final"]["accuracy"]
    assert s2["final"]["loss"] == pytest.approx(s1["final"]["loss"], rel=1e-4)
    assert s2["test"]["accuracy"] == s1["test"]["accuracy"]


def test_global_validation_figures_are_exact(runs: Path) -> None:
    # 101 validation images over 2 processes: 51 + 50, each counted once.
    summary = json.loads((runs / "two" / "summary.json").read_text())
    single = visiontrain.evaluate(visiontrain.load(runs / "two", device="cpu", which="last"), split="val")
    assert single["count"] == 101
    assert summary["final"]["accuracy"] == pytest.approx(single["accuracy"], abs=1e-12)
    assert summary["final"]["loss"] == pytest.approx(single["loss"], rel=1e-5)


def test_only_rank_zero_writes(runs: Path) -> None:
    run = runs / "two"
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]  # not one per process
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("val/accuracy")]
    assert len(steps) == len(set(steps)) == 2


@pytest.mark.slow
def test_with_batchnorm_every_rank_validates_the_model_rank_zero_saves(tmp_path: Path) -> None:
    """small_cnn has BatchNorm: each rank's running statistics move with its own batches, so the ranks validate
    rank 0's buffers (what is saved), and the reported figures equal a one-process evaluation of the checkpoint."""
    two = _torchrun(tmp_path, "bn", 2, "--model", "small_cnn", "--epochs", "1")
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((tmp_path / "bn" / "summary.json").read_text())
    single = visiontrain.evaluate(visiontrain.load(tmp_path / "bn", device="cpu", which="last"), split="val")
    assert summary["final"]["accuracy"] == pytest.approx(single["accuracy"], abs=1e-12)
    assert summary["final"]["loss"] == pytest.approx(single["loss"], rel=1e-6)


@pytest.mark.slow
def test_two_process_run_killed_resumes_in_one_process(runs: Path, tmp_path: Path) -> None:
    killed = _torchrun(tmp_path, "killed", 2, env=_env(VISIONTRAIN_FAULT="step:10"))
    assert killed.returncode != 0
    assert (tmp_path / "killed" / "checkpoints" / "resume.safetensors").is_file()
    resumed = subprocess.run([sys.executable, "-m", "visiontrain", "train", "--resume", str(tmp_path / "killed"),
                              "--threads", "1", "--quiet"], capture_output=True, text=True, timeout=240, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "sample stream verified" in resumed.stderr
    one, back = _weights(runs / "one"), _weights(tmp_path / "killed")
    for key in one:
        torch.testing.assert_close(back[key], one[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_uneven_batch_for_processes_is_a_clear_error(tmp_path: Path) -> None:
    bad = _torchrun(tmp_path, "bad", 2, "--batch-size", "63")
    assert bad.returncode != 0
    assert "not divisible by 2 processes" in bad.stderr
    assert not (tmp_path / "bad").exists()


# Each rank trains through the Python API and then lists its own OS threads. gloo's threads (pt_gloo_runloop) must
# be gone once train() returns: while they live, one that drops a tensor during interpreter shutdown aborts the
# process (SIGABRT, "terminate called without an active exception"), now and then, on a busy host.
_THREADS_AFTER_TRAIN = """
import os, sys
import visiontrain
visiontrain.train({"data": "synthetic", "data_args": {"train": 64, "val": 16, "size": 16}, "batch_size": 16,
                   "epochs": 1, "plots": False, "out": sys.argv[1], "name": "t"}, quiet=True)
names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
with open(os.path.join(sys.argv[2], "rank" + os.environ["RANK"]), "w") as f:  # one file each: prints interleave
    f.write(",".join(names))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the thread list from /proc (Linux)")
def test_the_process_group_and_its_threads_end_when_train_returns(tmp_path: Path) -> None:
    script = tmp_path / "after.py"
    script.write_text(_THREADS_AFTER_TRAIN)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "runs"), str(tmp_path)], capture_output=True, text=True,
                          timeout=240, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in ("0", "1"):
        threads = (tmp_path / f"rank{rank}").read_text()
        assert "python" in threads and "gloo" not in threads, (rank, threads)  # before: …,pt_gloo_runloop,…
