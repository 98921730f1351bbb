"""Data loading under faults: a DataLoader worker killed with SIGKILL mid-epoch (what the OOM killer does), an
item that hangs (cut by ``data.item_timeout_s``, naming the item), a corrupt file met mid-epoch (named), and
symlink loops in a data folder (the scan ends)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from visiontrain.config import DataConfig
from visiontrain.data.folders import folder_source
from visiontrain.data.guard import item_deadline, loader_errors
from visiontrain.errors import DataError


def _kill_a_worker(tmp_path: Path, shapes: Path, victim: int, after_steps: int,
                   child_pids: Callable[[int], list[int]]) -> None:
    """Train on ``shapes`` with 2 workers, SIGKILL one of them (as the kernel's OOM killer would) once
    ``after_steps`` steps are logged, and check the run ends in one line pointing at --workers 0."""
    argv = [sys.executable, "-m", "visiontrain", "train", "--data", shapes, "--workers", "2", "--cache", "off",
            "--epochs", "50", "--batch-size", "8", "--set", "train.log_every=1", "--out", tmp_path / "runs"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(list(map(str, argv)), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:  # the training has started once a step is logged: workers are running
            seen.append(line)
            if line.startswith("epoch ") and " step " in line and len(seen) > after_steps:
                break
        workers = child_pids(proc.pid)
        assert len(workers) >= 2, "".join(seen)
        os.kill(workers[victim % len(workers)], signal.SIGKILL)
        _out, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    err = "".join(seen) + rest
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("visiontrain: error: ")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    assert "data loading worker process died" in errors[0] and "--workers 0" in errors[0]


def test_a_worker_killed_mid_epoch_ends_the_run_in_one_line_pointing_at_workers_0(tmp_path: Path, shape_folder,
                                                                                  child_pids) -> None:
    _kill_a_worker(tmp_path, shape_folder(tmp_path / "shapes", 40), victim=0, after_steps=4, child_pids=child_pids)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(16))
def test_workers_killed_at_many_moments(trial: int, tmp_path: Path, shape_folder, child_pids) -> None:
    """Train workers and (idle, persistent) validation workers, mid-epoch and at epoch boundaries (18 steps an
    epoch): epochs 1 to 3."""
    _kill_a_worker(tmp_path, shape_folder(tmp_path / "shapes", 40), victim=trial, after_steps=6 + 2 * trial,
                   child_pids=child_pids)


SLOW_DATASET = '''
import time

import torch


class Slow(torch.utils.data.Dataset):
    """Item `hang_at` never returns (a stalled network mount, a lock that is never released)."""

    classes = ["a", "b"]

    def __init__(self, hang_at=5, n=24):
        self.n, self.hang_at = n, hang_at
        self.targets = [i % 2 for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.hang_at:
            try:
                time.sleep(3600)
            except Exception:  # a Dataset that swallows errors cannot swallow the timeout
                pass
        return torch.full((1, 16, 16), i / self.n), self.targets[i]
'''


@pytest.mark.parametrize("workers", [0, 2])
def test_an_item_that_hangs_is_cut_by_the_timeout_naming_it(workers: int, tmp_path: Path, main_cli,
                                                            one_line_error) -> None:
    module = tmp_path / "slow_data.py"
    module.write_text(SLOW_DATASET)
    started = time.monotonic()
    r = main_cli("train", "--data", f"{module}:Slow", "--set", "data.item_timeout_s=1", "--workers", workers,
                 "--epochs", "1", "--batch-size", "8", "--out", tmp_path / "runs", "--quiet")
    one_line_error(r, f"{module}:Slow[5]", "took longer than 1 s (data.item_timeout_s)", "--bad-images skip")
    assert time.monotonic() - started < 600  # it ended: nothing waited the full hour


def test_with_skip_the_hung_item_is_left_out_and_listed(tmp_path: Path, main_cli) -> None:
    module = tmp_path / "slow_data.py"
    module.write_text(SLOW_DATASET)
    r = main_cli("train", "--data", f"{module}:Slow", "--set", "data.item_timeout_s=1", "--bad-images", "skip",
                 "--epochs", "1", "--batch-size", "8", "--out", tmp_path / "runs", "--name", "skip", "--quiet")
    assert r.code == 0, r.err
    listed = (tmp_path / "runs" / "skip" / "bad_images.txt").read_text()
    assert f"{module}:Slow[5]\treading it took longer than 1 s" in listed


def test_the_deadline_and_the_translated_torch_errors() -> None:
    with pytest.raises(DataError, match=r"^cat\.jpg: reading it took longer than 0\.2 s"), \
            item_deadline(0.2, "cat.jpg"):
        time.sleep(30)
    with item_deadline(0.0, "no limit"):
        pass
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # the previous handler is back
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # nothing left armed
    with pytest.raises(DataError, match=r"worker process died \(DataLoader worker \(pid 7\) is killed by signal: "
                                        r"Killed\.\); .*--workers 0"), loader_errors():
        raise RuntimeError("DataLoader worker (pid 7) is killed by signal: Killed. ")
    with pytest.raises(DataError, match=r"while sending a batch \(ConnectionResetError\)"), loader_errors():
        raise ConnectionResetError(104, "Connection reset by peer")
    with pytest.raises(RuntimeError, match="unrelated"), loader_errors():
        raise RuntimeError("unrelated")


def test_a_corrupt_file_met_mid_epoch_is_named(tmp_path: Path, shape_folder, main_cli, one_line_error) -> None:
    """A file whose header is fine but whose pixels are cut off passes the up-front scan and fails in a worker."""
    root = shape_folder(tmp_path / "shapes", 12)
    victim = sorted((root / "circle").iterdir())[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    r = main_cli("train", "--data", root, "--workers", "2", "--cache", "off", "--epochs", "1", "--batch-size", "8",
                 "--out", tmp_path / "runs", "--quiet")
    one_line_error(r, str(victim), "--bad-images skip")


@pytest.mark.parametrize("follow", [False, True])
def test_symlink_loops_in_a_data_folder_end_the_scan(tmp_path: Path, shape_folder, follow: bool) -> None:
    root = shape_folder(tmp_path / "shapes", 3)
    os.symlink(root / "square", root / "circle" / "to_square")  # circle → square → circle → …
    os.symlink(root / "circle", root / "square" / "to_circle")
    os.symlink(root / "cross", root / "cross" / "self")  # a folder inside itself
    os.symlink(root / "triangle" / "b.png", root / "triangle" / "a.png")  # a file loop
    os.symlink(root / "triangle" / "a.png", root / "triangle" / "b.png")
    cfg = DataConfig(name=str(root), bad_images="skip", val_split=0.0, follow_symlinks=follow)
    source = folder_source(root, cfg, 0)
    per_class: dict[str, int] = {}
    for label in source.splits["train"].labels.tolist():
        per_class[source.classes[label]] = per_class.get(source.classes[label], 0) + 1
    # every class has its own 3 images and no more: a folder link is not followed by default, and never, even
    # with --follow-symlinks, into another class's folder or into a folder it is in (data/links.py)
    assert per_class == {"circle": 3, "square": 3, "cross": 3, "triangle": 3}
    reasons = {Path(link).name: reason for link, _, reason in source.skipped_links}
    assert set(reasons) == {"to_square", "to_circle", "self"}
    if follow:
        assert "another class" in reasons["to_square"] and "another class" in reasons["to_circle"]
        assert "already walked" in reasons["self"]
    else:
        assert all("not followed" in reason for reason in reasons.values())
    assert {Path(p).name for p, _ in source.bad_images} == {"a.png", "b.png"}
    assert all("symlink loop" in reason for _, reason in source.bad_images)
