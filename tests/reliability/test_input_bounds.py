"""Every number and name a user types is bounded: a table of bad flags and config values, each answered with ONE
line and exit code 2 before anything is built (no traceback, no run folder outside ``--out``, no terabyte
allocation, no endless forking); ``--workers`` above a few per core is capped with a note; and a loss that stops
being finite ends training with one line naming the step, keeping the last good checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import safetensors.torch
import torch

import visiontrain
from visiontrain.checkpoint.format import read_sidecar
from visiontrain.data.loaders import FileDataset, FileLoader
from visiontrain.data.sources import FileSplit
from visiontrain.engine.callbacks import Callback
from visiontrain.engine.resume import read_resume
from visiontrain.errors import VisiontrainError
from visiontrain.limits import WORKERS_PER_CORE, usable_cores

TINY = ["--data", "synthetic", "--data-arg", "train=48", "--data-arg", "val=16", "--data-arg", "test=16",
        "--epochs", "1", "--batch-size", "16", "--quiet"]

# argv after `train` + TINY → what the one line says. On the old code each of these trained (exit 0), crashed with
# a traceback, or tried to allocate terabytes.
TRAIN: dict[str, tuple[list[str], str]] = {
    "seed beyond any generator": (["--seed", "1180591620717411303424"], "train.seed"),
    "seed above 2**32-1": (["--seed", "4294967296"], "train.seed must be 0 to 4,294,967,295"),
    "negative seed": (["--seed", "-1"], "train.seed must be 0 to 4,294,967,295"),
    "lr inf": (["--lr", "inf"], "optim.lr must be a finite number"),
    "lr nan": (["--lr", "nan"], "optim.lr must be a finite number"),
    "YAML .inf": (["--set", "optim.weight_decay=.inf"], "optim.weight_decay must be a finite number"),
    "float overflow": (["--set", "train.clip_grad_norm=1e400"], "train.clip_grad_norm must be a finite number"),
    "workers 100000": (["--workers", "100000"], "data.workers must be 0 to 1024"),
    "epochs 10**12": (["--epochs", "1000000000000"], "train.epochs must be 1 to 1,000,000"),
    "image size 10**6": (["--image-size", "1000000"], "data.image_size must be 8 to 8192"),
    "head of 10**9": (["--head", "1000000000"], "model.head values must be 1 to 65,536"),
    "int beyond 2**62": (["--set", "data.cache_mb=10000000000000000000000"], "data.cache_mb is out of range"),
    "empty data": (["--data", ""], "data.name must name a dataset"),
    "blank data": (["--data", "  "], "data.name must name a dataset"),
    "name ../../x": (["--name", "../../x"], "name must be one folder name under --out"),
    "absolute name": (["--name", "ABSOLUTE"], "name must be one folder name under --out"),
    "name with a slash": (["--name", "a/b"], "name must be one folder name under --out"),
    "name ..": (["--name", ".."], "name must be one folder name under --out"),
    "empty name": (["--name", ""], "name must be one folder name under --out"),
    "synthetic 10**12 images": (["--data-arg", "train=1000000000000"], "at most 1,073,741,824 pixels per split"),
    "synthetic size abc": (["--data-arg", "size=abc"], "size must be a whole number"),
    "synthetic size 10**5": (["--data-arg", "size=100000"], "size 8 to 1024"),
}


@pytest.mark.parametrize("case", list(TRAIN))
def test_bad_train_values_are_one_line_before_anything_is_built(case: str, tmp_path: Path, main_cli, one_line_error,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    argv, fragment = TRAIN[case]
    argv = [str(tmp_path / "escape") if a == "ABSOLUTE" else a for a in argv]
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # `--data ""` would train on this folder, `--name ../../x` write to tmp_path/x
    one_line_error(main_cli("train", *TINY, *argv, "--out", work / "runs"), fragment)
    assert not (work / "runs").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_the_same_bounds_hold_in_a_config_file(tmp_path: Path, main_cli, one_line_error) -> None:
    path = tmp_path / "c.yaml"
    for text, fragment in (("seed: 99999999999", "train.seed"), ("lr: .nan", "optim.lr must be a finite number"),
                           ("name: ../up", "name must be one folder name"), ("workers: 5000", "data.workers")):
        path.write_text(f"data: synthetic\n{text}\n")
        one_line_error(main_cli("train", "--config", path, "--out", tmp_path / "runs"), str(path), fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("source", ["big file", "/dev/zero"])
def test_a_config_file_is_read_up_to_one_mib(source: str, tmp_path: Path, main_cli, one_line_error) -> None:
    path = Path(source)
    if source == "big file":  # valid YAML all the way: the old code read and used it
        path = tmp_path / "big.yaml"
        path.write_text("data: synthetic\n" + "# padding\n" * 110_000)
    one_line_error(main_cli("train", "--config", path), str(path), "larger than 1 MiB, the limit for a config file")


def test_a_config_of_up_to_one_mib_still_works(tmp_path: Path, main_cli) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("epochs: 1\n" + "# padding\n" * 100_000)  # 1,000,010 bytes
    r = main_cli("train", "--config", path, *TINY, "--out", tmp_path / "runs", "--name", "ok")
    assert r.code == 0, r.err


def test_threads_beyond_the_limit_are_refused_instead_of_crashing(tmp_path: Path, cli, one_line_error) -> None:
    # a subprocess: torch.set_num_threads(10**6) killed the process with SIGSEGV on the old code
    one_line_error(cli("train", *TINY, "--threads", "1000000", "--out", "runs", cwd=tmp_path),
                   "train.threads must be 1 to 1024")


OTHER: dict[str, tuple[list[str], str]] = {
    "lr-find start 0": (["lr-find", *TINY[:8], "--start-lr", "0"], "--start-lr and --end-lr must be positive"),
    "lr-find end inf": (["lr-find", *TINY[:8], "--end-lr", "inf"], "--start-lr and --end-lr must be positive"),
    "lr-find start nan": (["lr-find", *TINY[:8], "--start-lr", "nan"], "--start-lr and --end-lr must be positive"),
    "lr-find reversed": (["lr-find", *TINY[:8], "--start-lr", "1", "--end-lr", "0.1"], "below --end-lr"),
    "lr-find 0 steps": (["lr-find", *TINY[:8], "--steps", "0"], "--steps must be 5 to 100,000"),
    "data show -4": (["data", "show", "synthetic", "--count", "-4"], "--count must be 1 to 1024"),
    "data show 10**6": (["data", "show", "synthetic", "--count", "1000000"], "--count must be 1 to 1024"),
    "data stats -1": (["data", "stats", "synthetic", "--limit", "-1"], "--limit must be at least 1"),
    "data info seed": (["data", "info", "synthetic", "--seed", "-3"], "train.seed"),
}


@pytest.mark.parametrize("case", list(OTHER))
def test_bad_values_of_other_commands(case: str, tmp_path: Path, main_cli, one_line_error,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv, fragment = OTHER[case]
    one_line_error(main_cli(*argv), fragment)
    assert not any(tmp_path.iterdir())  # nothing written for a refused command


@pytest.mark.parametrize("argv", [["--top-k", "-5"], ["--top-k", "0"], ["--batch-size", "0"], ["--batch-size", "-5"]])
def test_predict_counts_must_be_at_least_one(argv: list[str], synthetic_run, main_cli, one_line_error) -> None:
    image = next((synthetic_run.dir / "samples").iterdir())
    one_line_error(main_cli("predict", synthetic_run.dir, image, *argv), "must be at least 1")


# -- worker processes ------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # torch's own advice, about the same thing
def test_workers_are_capped_at_a_few_per_core_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cap = WORKERS_PER_CORE * usable_cores()
    split = FileSplit([tmp_path / "a.png"], torch.zeros(1, dtype=torch.int64))
    dataset = FileDataset(split, 3, lambda x: x)
    assert FileLoader(dataset, 1, shuffle=False, seed=0, workers=cap).workers == cap  # no note at the cap
    assert "capped" not in capsys.readouterr().err
    loader = FileLoader(dataset, 1, shuffle=False, seed=0, workers=cap + 1)  # no process starts before iterating
    assert loader.workers == loader.loader.num_workers == cap
    assert f"note: --workers {cap + 1} capped to {cap} ({WORKERS_PER_CORE} per CPU core" in capsys.readouterr().err


def test_the_help_says_how_workers_are_bounded(main_cli) -> None:
    text = " ".join(main_cli("train", "--help").out.split())
    assert "more than 4 per CPU core are capped to that" in text and "(0 to 1024)" in text


# -- a loss that stops being finite ------------------------------------------------------------------------

def test_a_diverging_run_stops_with_one_line_naming_the_step(tmp_path: Path, main_cli, one_line_error) -> None:
    r = main_cli("train", *TINY, "--optimizer", "sgd", "--lr", "1e30", "--set", "train.log_every=2",
                 "--out", tmp_path, "--name", "div")
    line = one_line_error(r, "training diverged: the training loss is nan at step 2 (epoch 1, batch 2 of 3; "
                             "finite at step 0)", "lower --lr (it is 1e+30)")
    assert "nothing after step 0 was saved" in line
    assert not (tmp_path / "div" / "checkpoints").exists()  # no NaN weights written anywhere


class _RaiseLrAt(Callback):
    """A user callback (the public API) that sets an absurd learning rate from the second epoch on."""

    def on_epoch_start(self, state) -> None:
        if state.epoch == 1:
            for group in state.optimizer.param_groups:
                group["lr"] = 1e30


def test_the_last_good_checkpoints_are_kept_when_a_later_epoch_diverges(tmp_path: Path) -> None:
    cfg = {"data": {"name": "synthetic", "args": {"train": 48, "val": 16, "test": 16}}, "epochs": 3,
           "batch_size": 16, "optimizer": "sgd", "schedule": "none", "out": str(tmp_path), "name": "r"}
    with pytest.raises(VisiontrainError, match=r"at step 6 \(epoch 2, batch 3 of 3; finite at step 3\)") as caught:
        visiontrain.train(cfg, quiet=True, callbacks=[_RaiseLrAt()])
    assert type(caught.value).__name__ == "DivergedError"  # (by name: the test also runs against older code)
    folder = tmp_path / "r" / "checkpoints"
    for stem in ("best", "last"):
        assert read_sidecar(folder / f"{stem}.json")["epoch"] == 1
        tensors = safetensors.torch.load_file(folder / f"{stem}.safetensors")
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    meta, tensors = read_resume(folder / "resume.safetensors")
    assert (meta["epoch"], meta["step"]) == (1, 3)
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert visiontrain.load(tmp_path / "r").classes  # the kept checkpoint is usable


def test_a_finite_run_is_unchanged(tmp_path: Path, main_cli) -> None:
    r = main_cli("train", *TINY, "--out", tmp_path, "--name", "ok", "--set", "train.log_every=1")
    assert r.code == 0, r.err
    assert math.isfinite(read_sidecar(tmp_path / "ok" / "checkpoints" / "last.json")["metrics"]["train/loss"])

