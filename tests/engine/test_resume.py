"""Exact resume and reproducibility, with real processes and real SIGKILLs.

Run A trains uninterrupted, with EMA, gradient accumulation of 2, MixUp and dropout, so that the model,
the optimizer, the schedule, the EMA, every RNG and the half-finished accumulation all have to come back.
Run B, same config, is killed (``VISIONTRAIN_FAULT``: a real SIGKILL) inside the first epoch, right after
the end-of-epoch resume point is written, and inside a later epoch; it is resumed with ``visiontrain train
--resume`` after each kill. Its final weights (raw, EMA, best) must be bit-identical to A's
(``--deterministic`` on the CPU), its metrics.jsonl and TensorBoard scalars must equal A's with no step
twice. Run W is killed in the middle of atomic writes (resume file, checkpoint pair, metrics trim, summary)
and must end the same (slow tier). Run E is killed before it has any resume point — right after its config.yaml, then
(restarted) in the middle of writing its first resume point — and ``--resume`` starts it again from the
beginning in its own folder: it too must end equal to A, with no step logged twice and no temp file left.
A resume with changed data is refused; the same seed gives the same weights.

The subprocesses run the real CLI (``python -m visiontrain``) with ``--plots off``: the per-epoch matplotlib
pictures cost ~2 s per epoch here and have nothing to resume; the slow tier in test_fault_injection.py runs
with the pictures on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

import visiontrain
from visiontrain.checkpoint.format import load_weights, read_sidecar
from visiontrain.engine.callbacks import Callback
from visiontrain.engine.resume import read_resume
from visiontrain.engine.timing import is_timing
from visiontrain.errors import CheckpointError

# 600 images in batches of 32, two batches per optimizer step: 19 batches, 10 steps per epoch (the last
# cycle is one batch); 30 steps in all, a resume point every 4 steps (never at an epoch's last step) and
# after every epoch. Step s of epoch e is batch 2 * (s - 10 * e) of that epoch.
DATA = ["--plots", "off", "--data", "synthetic", "--set", "data.args.train=600", "--set", "data.args.val=100",
        "--set", "data.args.test=50", "--set", "data.args.size=16", "--batch-size", "32"]
BASE = [*DATA, "--epochs", "3", "--checkpoint-every", "4", "--set", "train.log_every=1", "--deterministic",
        "--device", "cpu", "--quiet", "--accumulate", "2", "--ema-decay", "0.9", "--mixup", "0.2",
        "--set", "model.args.dropout=0.2"]
STEPS = 30
# Kills of run B, in order, with the resume point (epoch, batch_in_epoch, step) each leaves; every process
# after the first resumes B and counts its own steps and writes from 1.
KILLS = [
    ("step:7", (0, 8, 4)),  # inside epoch 1, three steps past the resume point at step 4
    ("after-resume-write:2", (1, 0, 10)),  # the epoch boundary: right after the end-of-epoch-1 resume write
    ("step:15", (2, 8, 24)),  # step 25, inside epoch 3
]
# Kills of run W in the middle of atomic writes (after the temp file is complete, before its rename).
MID_WRITE = [
    ("before-rename/resume.safetensors:2", (0, 8, 4)),  # writing the 2nd resume point: the 1st must survive
    ("before-rename/last.json:1", (0, 16, 8)),  # between the renames of last.safetensors and last.json
    ("before-rename/metrics.jsonl:1", (0, 16, 8)),  # while a resume trims metrics.jsonl
    ("before-rename/summary.json:1", (3, 0, STEPS)),  # training done, writing summary.json
]
# Kills of run E before its first resume point (step 4): none leaves one, so each `--resume` starts it again.
EARLY = ["after-config:1",  # right after config.yaml: nothing else written yet
         "before-rename/resume.safetensors:1"]  # 4 steps logged (metrics, TensorBoard), first resume write cut


def vt(args: list[str], cwd: Path, fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, optionally with a fault point armed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("VISIONTRAIN_FAULT", None)
    if fault:
        env["VISIONTRAIN_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "visiontrain", "train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@dataclass
class Attempt:
    fault: str | None
    code: int
    err: str
    point: tuple[int, int, int] | None = None  # (epoch, batch_in_epoch, step) of resume.safetensors afterwards
    seen: dict[str, Any] = field(default_factory=dict)  # what an inspection found in the run folder afterwards


@dataclass
class Chain:
    dir: Path
    attempts: list[Attempt] = field(default_factory=list)


def resume_point(run_dir: Path) -> tuple[int, int, int] | None:
    path = run_dir / "checkpoints" / "resume.safetensors"
    if not path.exists():
        return None
    meta, _ = read_resume(path)
    return meta["epoch"], meta["batch_in_epoch"], meta["step"]


def run_chain(cwd: Path, name: str, args: list[str], faults: list[str],
              inspect: Callable[[Path, str], dict[str, Any]] | None = None) -> Chain:
    """Start ``name`` with the first fault, resume it once per further fault (``inspect`` looks at the run
    folder after each kill), then resume it to the end."""
    chain = Chain(cwd / "runs" / name)
    for i, fault in enumerate([*faults, None]):
        cmd = [*args, "--name", name] if i == 0 else ["--resume", str(chain.dir), "--quiet"]
        proc = vt(cmd, cwd, fault)
        seen = inspect(chain.dir, fault) if inspect is not None and fault is not None else {}
        chain.attempts.append(Attempt(fault, proc.returncode, proc.stderr, resume_point(chain.dir), seen))
    return chain


def _inspect_mid_write(run_dir: Path, fault: str) -> dict[str, Any]:
    """After a kill inside an atomic write: the temp files left, and how every checkpoint pair loads."""
    target = fault.split("/")[1].split(":")[0]
    temps = sorted(p.name for p in run_dir.rglob(".*.tmp"))
    pairs = {}
    for sidecar in sorted((run_dir / "checkpoints").glob("*.json")):
        try:
            load_weights(sidecar, read_sidecar(sidecar))
            pairs[sidecar.stem] = "ok"
        except CheckpointError as exc:
            pairs[sidecar.stem] = str(exc)
    return {"target": target, "temps": temps, "pairs": pairs}


def _inspect_early(run_dir: Path, fault: str) -> dict[str, Any]:
    """After a kill before the first resume point: what the killed process left behind."""
    return {"temps": sorted(p.name for p in run_dir.rglob(".*.tmp")), "config": (run_dir / "config.yaml").is_file(),
            "metrics": len(records(run_dir)) if (run_dir / "metrics.jsonl").exists() else 0}


def _chains(cwd: Path, jobs: dict[str, Callable[[], Chain]]) -> dict[str, Chain]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Chain]:
    """A, the killed-and-resumed B and E (eight processes, two at a time: B's four beside A's one and E's three)."""
    cwd = tmp_path_factory.mktemp("resume")
    return _chains(cwd, {"B": lambda: run_chain(cwd, "B", BASE, [f for f, _ in KILLS]),
                         "A": lambda: run_chain(cwd, "A", BASE, []),
                         "E": lambda: run_chain(cwd, "E", BASE, EARLY, inspect=_inspect_early)})


@pytest.fixture(scope="module")
def write_kills(runs: dict[str, Chain], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Chain]:
    """W (five more processes; slow tier), beside A to compare with."""
    cwd = tmp_path_factory.mktemp("resume-writes")
    return {"A": runs["A"], "W": run_chain(cwd, "W", BASE, [f for f, _ in MID_WRITE], inspect=_inspect_mid_write)}


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
    return [{k: v for k, v in json.loads(line).items() if not is_timing(k)} for line in lines]


def results(run_dir: Path) -> str:
    """results.csv without its timing columns, as text: the header and the rows as written."""
    lines = (run_dir / "results.csv").read_text(encoding="utf-8").splitlines()
    keep = [i for i, name in enumerate(lines[0].split(",")) if not is_timing(name)]
    return "\n".join(",".join(line.split(",")[i] for i in keep) for line in lines)


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


def _on_optimizer_steps(chains: list[Chain]) -> None:
    points = [a.point for chain in chains for a in chain.attempts if a.point is not None]
    assert points
    for epoch, batch, step in points:
        assert batch == (0 if step == 10 * epoch else 2 * (step - 10 * epoch)), (epoch, batch, step)


def test_resume_points_fall_on_optimizer_steps_never_inside_an_accumulation_cycle(runs: dict[str, Chain]) -> None:
    _on_optimizer_steps([runs["B"]])


def test_resumed_run_is_bit_identical_to_the_uninterrupted_one(runs: dict[str, Chain]) -> None:
    a, b = _ok(runs["A"]).dir, _ok(runs["B"]).dir
    for which in ("last", "ema", "best"):
        assert_bit_identical(a, b, which)
    sa, sb = summary(a), summary(b)
    for key in ("final", "final_ema", "best", "test", "steps", "epochs_completed", "stop_reason"):
        assert sa[key] == sb[key], key
    assert sa["steps"] == STEPS
    assert {k: v for k, v in sb["train"].items() if not is_timing(k)} == {
        k: v for k, v in sa["train"].items() if not is_timing(k)}
    assert sb["resumed_from"] == {"epoch": 2, "batch": 8, "step": 24}
    assert sa["resumed_from"] is None


def test_metrics_jsonl_has_every_step_once_with_the_uninterrupted_values(runs: dict[str, Chain]) -> None:
    ra, rb = records(_ok(runs["A"]).dir), records(_ok(runs["B"]).dir)
    steps = [r["step"] for r in rb if r["kind"] == "step"]
    assert steps == list(range(1, STEPS + 1))  # no step repeated or skipped by the kills
    assert [r["epoch"] for r in rb if r["kind"] == "epoch"] == [1, 2, 3]
    assert rb == ra


@pytest.mark.parametrize("name", ["B", "E", pytest.param("W", marks=pytest.mark.slow)])
def test_results_csv_lists_every_epoch_once_with_the_uninterrupted_values(request: pytest.FixtureRequest,
                                                                          name: str) -> None:
    runs = request.getfixturevalue("write_kills" if name == "W" else "runs")
    expected = results(_ok(runs["A"]).dir)
    assert [line.split(",")[0] for line in expected.splitlines()] == ["epoch", "1", "2", "3"]
    assert results(_ok(runs[name]).dir) == expected  # header once, each epoch once, the same numbers


def test_tensorboard_has_no_duplicate_steps_and_equals_the_uninterrupted_run(runs: dict[str, Chain]) -> None:
    ta, tb = tensorboard_scalars(_ok(runs["A"]).dir), tensorboard_scalars(_ok(runs["B"]).dir)
    assert set(tb) == set(ta) and "train/loss" in tb
    for tag, points in tb.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: duplicate or unordered steps after resume"
    assert tb["train/loss"] == ta["train/loss"] and len(tb["train/loss"]) == STEPS
    assert tb == ta


@pytest.mark.slow
def test_a_kill_mid_write_leaves_the_previous_file_whole_and_nothing_half_written_is_read(
        write_kills: dict[str, Chain]) -> None:
    w = write_kills["W"]
    _on_optimizer_steps([w])
    for attempt, (fault, point) in zip(w.attempts, MID_WRITE, strict=False):
        seen = attempt.seen
        assert attempt.code == -9, (fault, attempt.err[-2000:])
        assert attempt.point == point, fault  # resume.safetensors is whole and is the previous point
        assert any(t.startswith(f".{seen['target']}.") for t in seen["temps"]), seen  # killed in that write
        assert len(seen["temps"]) == 1, seen  # temps of earlier kills were cleaned by the resume
        for outcome in seen["pairs"].values():
            # a pair is whole, or — killed between its two renames — refused by its checksum, never misread
            assert outcome == "ok" or "not written together" in outcome, outcome
    assert "not written together" in w.attempts[1].seen["pairs"]["last"]  # killed between the renames of last.*
    assert set(w.attempts[3].seen["pairs"].values()) == {"ok"}  # rewritten by the next resume point


@pytest.mark.slow
def test_runs_killed_mid_write_resume_bit_identical(write_kills: dict[str, Chain]) -> None:
    runs = write_kills
    a, w = _ok(runs["A"]).dir, _ok(runs["W"]).dir
    assert len(runs["W"].attempts) == len(MID_WRITE) + 1
    for which in ("last", "ema", "best"):
        assert_bit_identical(a, w, which)
    sa, sw = summary(a), summary(w)
    for key in ("final", "final_ema", "best", "test", "steps", "epochs_completed"):
        assert sa[key] == sw[key], key  # also when only summary.json was left to write
    assert {k: v for k, v in sw["train"].items() if not is_timing(k)} == {
        k: v for k, v in sa["train"].items() if not is_timing(k)}
    assert records(a) == records(w)
    assert not list(w.rglob(".*.tmp"))  # the last resume removed the killed writes' temp files
    for sidecar in (w / "checkpoints").glob("*.json"):
        load_weights(sidecar, read_sidecar(sidecar))


def _without_hparams(scalars: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    return {tag: points for tag, points in scalars.items() if not tag.startswith("hparams/")}


@pytest.mark.slow
def test_tensorboard_of_runs_killed_mid_write_equals_the_uninterrupted_run(write_kills: dict[str, Chain]) -> None:
    runs = write_kills
    assert _without_hparams(tensorboard_scalars(_ok(runs["W"]).dir)) == _without_hparams(
        tensorboard_scalars(_ok(runs["A"]).dir))


@pytest.mark.slow
def test_tensorboard_hparams_are_logged_once_after_a_kill_at_the_very_end(write_kills: dict[str, Chain]) -> None:
    scalars = tensorboard_scalars(_ok(write_kills["W"]).dir)
    hparams = {tag: points for tag, points in scalars.items() if tag.startswith("hparams/")}
    assert hparams and all(len(points) == 1 for points in hparams.values()), hparams


def test_a_run_killed_before_its_first_resume_point_starts_again_and_equals_the_uninterrupted_one(
        runs: dict[str, Chain]) -> None:
    chain = runs["E"]
    first, second = chain.attempts[0], chain.attempts[1]
    assert [a.code for a in chain.attempts[:2]] == [-9, -9], [a.err[-2000:] for a in chain.attempts]
    assert first.point is None and second.point is None  # neither kill left a resume point
    assert first.seen == {"temps": [], "config": True, "metrics": 0}
    assert second.seen["metrics"] == 4 and len(second.seen["temps"]) == 1, second.seen  # logged, then cut mid-write
    for attempt in chain.attempts[1:]:
        assert "stopped before its first resume point, so it starts again from the beginning" in attempt.err
    a, e = _ok(runs["A"]).dir, _ok(chain).dir
    for which in ("last", "ema", "best"):
        assert_bit_identical(a, e, which)
    assert records(e) == records(a)  # every step once, with the uninterrupted values
    assert tensorboard_scalars(e) == tensorboard_scalars(a)  # hparams included: no duplicate anywhere
    assert len(list(e.glob("events.out.tfevents.*"))) == 1
    sa, se = summary(a), summary(e)
    for key in ("final", "final_ema", "best", "test", "steps", "epochs_completed", "resumed_from"):
        assert sa[key] == se[key], key
    assert not list(e.rglob(".*.tmp"))


def test_resume_with_changed_data_is_refused_in_one_line(runs: dict[str, Chain], main_cli: Any,
                                                         one_line_error: Any) -> None:
    run_dir = _ok(runs["B"]).dir
    before = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:  # in this process: the run's --deterministic would switch torch's global flag on
        result = main_cli("train", "--resume", run_dir, "--set", "data.args.train=601", "--quiet")
    finally:
        torch.use_deterministic_algorithms(deterministic)
    one_line_error(result, "sample-stream fingerprint mismatch", str(run_dir))
    assert {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()} == before


def test_a_finished_run_whose_resume_point_was_deleted_is_refused_not_restarted(
        runs: dict[str, Chain], tmp_path: Path, main_cli: Any, one_line_error: Any) -> None:
    run_dir = tmp_path / "B"
    shutil.copytree(_ok(runs["B"]).dir, run_dir)
    (run_dir / "checkpoints" / "resume.safetensors").unlink()  # e.g. removed by hand to save space
    before = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        result = main_cli("train", "--resume", run_dir, "--quiet")
    finally:
        torch.use_deterministic_algorithms(deterministic)
    one_line_error(result, "but no checkpoints/resume.safetensors", str(run_dir))
    assert {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()} == before


def _seeded(out: Path, name: str, seed: int) -> visiontrain.Run:
    config = {"data": {"name": "synthetic", "batch_size": 32, "args": {"train": 256, "val": 64, "test": 32,
                                                                      "size": 16}},
              "model": {"name": "small_cnn", "args": {"dropout": 0.2}},
              "train": {"epochs": 2, "seed": seed, "log_every": 1, "mixup_alpha": 0.2, "device": "cpu",
                        "plots": False},
              "out": str(out), "name": name}
    return visiontrain.train(config, quiet=True)


def test_same_seed_same_weights_and_metrics_other_seed_other_weights(tmp_path: Path) -> None:
    first, again, other = (_seeded(tmp_path, name, seed) for name, seed in (("s1", 3), ("s2", 3), ("s3", 4)))
    w1, w2, w3 = weights(first.dir), weights(again.dir), weights(other.dir)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert records(first.dir) == records(again.dir)
    assert first.summary["final"] == again.summary["final"]
    assert any(not torch.equal(w1[k], w3[k]) for k in w1 if w1[k].is_floating_point())


@pytest.fixture
def folder_run(tmp_path: Path, shape_folder: Any) -> Iterator[tuple[Path, visiontrain.Run]]:
    root = shape_folder(tmp_path / "shapes", 5, size=16)
    config = {"data": {"name": str(root), "batch_size": 8, "val_split": 0.2}, "model": {"name": "mlp"},
              "train": {"epochs": 1, "device": "cpu", "plots": False}, "out": str(tmp_path / "runs"), "name": "folder"}
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


class _StepFlags(Callback):
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_fit_start(self, state: Any) -> None:
        self.seen = [{k: g.get(k) for k in ("fused", "foreach")} for g in state.optimizer.param_groups]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_resume_point_saved_with_a_fused_step_continues_unfused_on_the_cpu(tmp_path: Path, optimizer: str) -> None:
    """On a GPU the optimizer step is fused (engine/optim.fused_step), and the resume point's param groups say so.
    Continued on a CPU, the step is this device's (torch's default), not the flag the file holds; the run ends."""
    config = {"data": {"name": "synthetic", "args": {"train": 64, "val": 16, "test": 16, "size": 16},
                       "batch_size": 16}, "model": {"name": "mlp"}, "optim": {"name": optimizer},
              "train": {"epochs": 1, "device": "cpu", "plots": False}, "out": str(tmp_path), "name": "r"}
    run = visiontrain.train(config, quiet=True)
    path = run.dir / "checkpoints" / "resume.safetensors"
    meta, tensors = read_resume(path)
    assert all(group["fused"] is None for group in meta["optimizer"]["param_groups"])  # a CPU run: not fused
    for group in meta["optimizer"]["param_groups"]:
        group["fused"] = True  # what the same run writes on a CUDA device
    path.write_bytes(safetensors.torch.save(tensors, metadata={"visiontrain": json.dumps(meta)}))
    flags = _StepFlags()
    resumed = visiontrain.train({**config, "train": {**config["train"], "epochs": 2}}, resume=run.dir,
                                callbacks=[flags], quiet=True)
    assert flags.seen and all(seen["fused"] is None for seen in flags.seen), flags.seen
    assert resumed.summary["epochs_completed"] == 2
