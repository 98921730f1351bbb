"""Exact resume and reproducibility, with real processes and real SIGKILLs.

Run A trains uninterrupted. Run B, with the same config, is killed (``VISIONTRAIN_FAULT``: a real SIGKILL)
inside the first epoch, at the last step of an epoch, right after the epoch-end resume point is written,
and inside a later epoch; it is resumed with ``visiontrain train --resume`` after each kill. Its final
weights must be bit-identical to A's (``--deterministic`` on the CPU), its metrics.jsonl and TensorBoard
scalars must equal A's with no step twice, and a resume with changed data is refused. The same with EMA,
gradient accumulation, MixUp and dropout (every RNG and the EMA restored). Same seed → same weights.

The subprocesses run the real CLI (``visiontrain.cli.main``) with the per-epoch matplotlib pictures replaced
by a no-op (they cost ~2 s per epoch here and have nothing to resume); the slow tier in
test_fault_injection.py runs ``python -m visiontrain`` untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

import visiontrain
from visiontrain.engine.callbacks import Callback
from visiontrain.engine.resume import read_resume
from visiontrain.errors import CheckpointError

LAUNCH = """
import sys
import visiontrain.runner as runner
from visiontrain.engine.callbacks import Callback

class _NoPictures(Callback):
    def __init__(self, *args, **kwargs):
        pass

runner.Pictures = _NoPictures
from visiontrain.cli import main
sys.exit(main(sys.argv[1:]))
"""

# 600 images in batches of 32: 19 batches (= optimizer steps) per epoch, the last one short; 57 steps in all
DATA = ["--data", "synthetic", "--set", "data.args.train=600", "--set", "data.args.val=100",
        "--set", "data.args.test=50", "--set", "data.args.size=16", "--batch-size", "32"]
BASE = [*DATA, "--epochs", "3", "--checkpoint-every", "5", "--set", "train.log_every=1", "--deterministic",
        "--device", "cpu", "--quiet"]
# Kills of run B, in order; each process after the first resumes B and counts its own steps from 1.
KILLS = [
    ("step:7", (0, 5, 5)),  # inside epoch 1, two steps past the checkpoint at step 5
    ("step:14", (0, 15, 15)),  # step 19 = the last step of epoch 1, before its end-of-epoch checkpoint
    ("after-resume-write:1", (1, 0, 19)),  # the epoch boundary: right after the epoch-end resume write
    ("step:28", (2, 7, 45)),  # step 47, inside epoch 3
]
# EMA + accumulation of 2 + MixUp + dropout: every RNG and the EMA must come back; 10 steps per epoch.
EXTRA = [*DATA, "--epochs", "2", "--checkpoint-every", "3", "--set", "train.log_every=1", "--deterministic",
         "--device", "cpu", "--quiet", "--accumulate", "2", "--ema-decay", "0.9", "--mixup", "0.2",
         "--set", "model.args.dropout=0.2"]
TIMING = ("time", "epoch_time_s", "img_per_s", "wall_time_s")


def vt(args: list[str], cwd: Path, fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, optionally with a fault point armed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("VISIONTRAIN_FAULT", None)
    if fault:
        env["VISIONTRAIN_FAULT"] = fault
    return subprocess.run([sys.executable, "-c", LAUNCH, "train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@dataclass
class Attempt:
    fault: str | None
    code: int
    err: str
    point: tuple[int, int, int] | None = None  # (epoch, batch_in_epoch, step) of resume.safetensors afterwards


@dataclass
class Chain:
    dir: Path
    attempts: list[Attempt] = field(default_factory=list)
    refused: Attempt | None = None
    resume_bytes_before_refusal: bytes = b""
    resume_bytes_after_refusal: bytes = b""


def resume_point(run_dir: Path) -> tuple[int, int, int] | None:
    path = run_dir / "checkpoints" / "resume.safetensors"
    if not path.exists():
        return None
    meta, _ = read_resume(path)
    return meta["epoch"], meta["batch_in_epoch"], meta["step"]


def run_chain(cwd: Path, name: str, args: list[str], faults: list[str], refuse: list[str] | None = None) -> Chain:
    """Start ``name`` with the first fault, resume it once per further fault, optionally try a refused resume,
    then resume it to the end."""
    chain = Chain(cwd / "runs" / name)
    for i, fault in enumerate([*faults, None]):
        cmd = [*args, "--name", name] if i == 0 else ["--resume", str(chain.dir), "--quiet"]
        if fault is None and refuse is not None:
            chain.resume_bytes_before_refusal = (chain.dir / "checkpoints" / "resume.safetensors").read_bytes()
            proc = vt(["--resume", str(chain.dir), *refuse], cwd)
            chain.refused = Attempt(None, proc.returncode, proc.stderr)
            chain.resume_bytes_after_refusal = (chain.dir / "checkpoints" / "resume.safetensors").read_bytes()
        proc = vt(cmd, cwd, fault)
        chain.attempts.append(Attempt(fault, proc.returncode, proc.stderr, resume_point(chain.dir)))
    return chain


def plain_run(cwd: Path, name: str, args: list[str]) -> Chain:
    return run_chain(cwd, name, args, [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Chain]:
    """A and the killed-and-resumed B; the EMA/accumulation pair. Two processes at a time."""
    cwd = tmp_path_factory.mktemp("resume")
    jobs = {
        "B": lambda: run_chain(cwd, "B", BASE, [f for f, _ in KILLS], refuse=["--set", "data.args.train=601"]),
        "A": lambda: plain_run(cwd, "A", BASE),
        "EA": lambda: plain_run(cwd, "EA", EXTRA),
        "EB": lambda: run_chain(cwd, "EB", EXTRA, ["step:7"]),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def _ok(chain: Chain) -> Chain:
    last = chain.attempts[-1]
    assert last.code == 0, last.err[-3000:]
    return chain


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(run_dir / "checkpoints" / f"{which}.safetensors")


def assert_bit_identical(a: Path, b: Path, which: str = "last") -> None:
    wa, wb = weights(a, which), weights(b, which)
    assert wa.keys() == wb.keys()
    unequal = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not unequal, f"{which}: {len(unequal)} tensors differ, e.g. {unequal[:3]}"


def records(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without its timings."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith(TIMING)} for line in lines]


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
            if not tag.startswith("time/")}


def test_every_kill_was_a_real_sigkill_at_the_intended_point(runs: dict[str, Chain]) -> None:
    b = runs["B"]
    for attempt, (fault, point) in zip(b.attempts, KILLS, strict=False):
        assert attempt.fault == fault
        assert attempt.code == -9, (fault, attempt.code, attempt.err[-2000:])
        assert attempt.point == point, fault  # the resume point the next process starts from
    assert len(b.attempts) == len(KILLS) + 1
    resumed = [a.err for a in b.attempts[1:]]
    for err, (_, (epoch, batch, step)) in zip(resumed, KILLS, strict=True):
        assert f"at epoch {epoch + 1}, batch {batch} (step {step}); sample stream verified" in err, err[-2000:]


def test_resumed_run_is_bit_identical_to_the_uninterrupted_one(runs: dict[str, Chain]) -> None:
    a, b = _ok(runs["A"]).dir, _ok(runs["B"]).dir
    assert_bit_identical(a, b, "last")
    assert_bit_identical(a, b, "best")
    sa, sb = summary(a), summary(b)
    for key in ("final", "best", "test", "steps", "epochs_completed", "stop_reason"):
        assert sa[key] == sb[key], key
    assert sa["steps"] == 57
    assert {k: v for k, v in sb["train"].items() if not k.endswith(TIMING)} == {
        k: v for k, v in sa["train"].items() if not k.endswith(TIMING)}
    assert sb["resumed_from"] == {"epoch": 2, "batch": 7, "step": 45}


def test_metrics_jsonl_has_every_step_once_with_the_uninterrupted_values(runs: dict[str, Chain]) -> None:
    ra, rb = records(_ok(runs["A"]).dir), records(_ok(runs["B"]).dir)
    steps = [r["step"] for r in rb if r["kind"] == "step"]
    assert steps == list(range(1, 58))  # no step repeated or skipped by the four kills
    assert [r["epoch"] for r in rb if r["kind"] == "epoch"] == [1, 2, 3]
    assert rb == ra


def test_tensorboard_has_no_duplicate_steps_and_equals_the_uninterrupted_run(runs: dict[str, Chain]) -> None:
    ta, tb = tensorboard_scalars(_ok(runs["A"]).dir), tensorboard_scalars(_ok(runs["B"]).dir)
    assert set(tb) == set(ta) and "train/loss" in tb
    for tag, points in tb.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: duplicate or unordered steps after resume"
    assert tb["train/loss"] == ta["train/loss"] and len(tb["train/loss"]) == 57
    assert tb == ta


def test_resume_with_changed_data_is_refused_in_one_line(runs: dict[str, Chain]) -> None:
    refused = runs["B"].refused
    assert refused is not None and refused.code == 2, refused
    lines = [line for line in refused.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("visiontrain: error: "), refused.err
    assert "sample-stream fingerprint" in lines[0] and "Traceback" not in refused.err
    assert runs["B"].resume_bytes_after_refusal == runs["B"].resume_bytes_before_refusal


def test_resume_restores_ema_rngs_and_stops_only_at_optimizer_steps(runs: dict[str, Chain]) -> None:
    ea, eb = _ok(runs["EA"]), _ok(runs["EB"])
    kill = eb.attempts[0]
    assert kill.code == -9
    epoch, batch, step = kill.point or (None, None, None)
    assert (epoch, step) == (0, 6) and batch == 2 * step  # a resume point never falls inside a cycle
    for which in ("last", "ema", "best"):
        assert_bit_identical(ea.dir, eb.dir, which)
    sa, sb = summary(ea.dir), summary(eb.dir)
    assert sa["final_ema"] == sb["final_ema"] and sa["final"] == sb["final"] and sa["steps"] == sb["steps"] == 20
    assert records(ea.dir) == records(eb.dir)


class _NoPictures(Callback):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture
def no_pictures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("visiontrain.runner.Pictures", _NoPictures)


def _seeded(out: Path, name: str, seed: int) -> visiontrain.Run:
    config = {"data": {"name": "synthetic", "batch_size": 32, "args": {"train": 256, "val": 64, "test": 32,
                                                                      "size": 16}},
              "model": {"name": "small_cnn", "args": {"dropout": 0.2}},
              "train": {"epochs": 2, "seed": seed, "log_every": 1, "mixup_alpha": 0.2, "device": "cpu"},
              "out": str(out), "name": name}
    return visiontrain.train(config, quiet=True)


@pytest.mark.usefixtures("no_pictures")
def test_same_seed_same_weights_and_metrics_other_seed_other_weights(tmp_path: Path) -> None:
    first, again, other = (_seeded(tmp_path, name, seed) for name, seed in (("s1", 3), ("s2", 3), ("s3", 4)))
    w1, w2, w3 = weights(first.dir), weights(again.dir), weights(other.dir)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert records(first.dir) == records(again.dir)
    assert first.summary["final"] == again.summary["final"]
    assert any(not torch.equal(w1[k], w3[k]) for k in w1 if w1[k].is_floating_point())


@pytest.fixture
def folder_run(tmp_path: Path, shape_folder: Any, no_pictures: None) -> Iterator[tuple[Path, visiontrain.Run]]:
    root = shape_folder(tmp_path / "shapes", 5, size=16)
    config = {"data": {"name": str(root), "batch_size": 8, "val_split": 0.2}, "model": {"name": "mlp"},
              "train": {"epochs": 1, "device": "cpu"}, "out": str(tmp_path / "runs"), "name": "folder"}
    yield root, visiontrain.train(config, quiet=True)


def test_a_refused_resume_leaves_the_run_folder_untouched(folder_run: tuple[Path, visiontrain.Run],
                                                          shape_folder: Any) -> None:
    root, run = folder_run
    before = {p: p.read_bytes() for p in sorted(run.dir.rglob("*")) if p.is_file()}
    assert run.dir / "split.json" in before
    shape_folder(root, 6, size=16, seed=1)  # more images: another split and another sample stream
    with pytest.raises(CheckpointError, match="sample-stream fingerprint mismatch"):
        visiontrain.train(resume=run.dir, quiet=True)
    after = {p: p.read_bytes() for p in sorted(run.dir.rglob("*")) if p.is_file()}
    assert after == before
