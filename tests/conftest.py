"""Shared fixtures: trained synthetic runs (one per session, via the API), the CLI as a subprocess or in-process,
and folder-per-class trees written as real PNG files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visiontrain
from visiontrain.cli import main as cli_main
from visiontrain.data.synthetic import SHAPES, make_shapes
from visiontrain.engine.callbacks import Callback, StopTraining

# The test machine's few cores are shared with other jobs; torch's intra-op threads then wait on each other
# (a 2-thread run measured 10x slower than a 1-thread one under load). One thread is fast and steady; the
# environment says so too, or every in-process run's `threads: auto` would pick its own count.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}  # one thread: the machine is shared


def run_commands(commands: dict[str, list[str | Path]], cwd: Path, timeout: float = 180) -> dict[str, CliResult]:
    """Run several commands at once (each a full argv) and wait for all; results by name."""
    procs = {name: subprocess.Popen(list(map(str, argv)), cwd=cwd, env=_ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, argv in commands.items()}
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[name] = CliResult(proc.returncode, out, err)
    return results


def run_cli(*args: str | Path, cwd: Path, timeout: float = 180) -> CliResult:
    """``python -m visiontrain ARGS`` as a real process."""
    return run_commands({"cli": [sys.executable, "-m", "visiontrain", *args]}, cwd, timeout)["cli"]


@pytest.fixture(scope="session")
def cli() -> Callable[..., CliResult]:
    """The CLI as a subprocess: ``cli("train", "--data", "synthetic", cwd=tmp_path)``."""
    return run_cli


@pytest.fixture(scope="session")
def commands() -> Callable[..., dict[str, CliResult]]:
    """Several processes at once: ``commands({"a": [sys.executable, "-m", "visiontrain", ...]}, cwd=...)``."""
    return run_commands


@pytest.fixture
def main_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """The CLI in this process (fast, for error paths): ``main_cli("train", "--data", "nope")``.

    argparse's own errors (SystemExit) are turned into results too.
    """

    def call(*args: str | Path) -> CliResult:
        capsys.readouterr()
        try:
            code = cli_main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return call


def list_children(pid: int) -> list[int]:
    """The direct children of a live process (Linux /proc); [] once it has gone."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@pytest.fixture(scope="session")
def child_pids() -> Callable[[int], list[int]]:
    return list_children


def assert_one_line_error(result: CliResult, *fragments: str) -> str:
    """Exit code 2, exactly one `visiontrain: error: ...` line on stderr, no traceback; returns the line."""
    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("visiontrain: error: ")]
    assert len(errors) == 1, result.err
    assert errors[0] == lines[-1], result.err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


@pytest.fixture(scope="session")
def one_line_error() -> Callable[..., str]:
    return assert_one_line_error


def write_shape_pngs(folder: Path, count: int, seed: int) -> tuple[list[Path], list[int]]:
    """``count`` 32-px RGB shape images as ``folder/<i>.png`` and their labels: real files to predict."""
    folder.mkdir(parents=True, exist_ok=True)
    pictures, labels = make_shapes(count, 32, 3, seed=seed)
    paths = []
    for i, image in enumerate(pictures):
        paths.append(folder / f"{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths, labels.tolist()


@pytest.fixture(scope="session")
def shape_pngs() -> Callable[..., tuple[list[Path], list[int]]]:
    return write_shape_pngs


class StopAt(Callback):
    """Stops a training run (as a user's callback would) once it has taken ``step`` optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, state) -> None:
        if state.step == self.step:
            raise StopTraining("enough for now")


@pytest.fixture(scope="session")
def stop_at() -> Callable[[int], StopAt]:
    return StopAt


def write_shape_folder(root: Path, per_class: int, *, size: int = 32, channels: int = 3, seed: int = 0,
                       suffix: str = ".png") -> Path:
    """``root/<shape>/<i>.png`` for every synthetic class: a real folder-per-class dataset."""
    images, labels = make_shapes(per_class * len(SHAPES), size, channels, seed=seed)
    counts = dict.fromkeys(SHAPES, 0)
    for image, label in zip(images, labels.tolist(), strict=True):
        name = SHAPES[label]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        array = image.permute(1, 2, 0).squeeze(-1).numpy()
        Image.fromarray(array).save(folder / f"{counts[name]:03d}{suffix}")
        counts[name] += 1
    return root


@pytest.fixture(scope="session")
def shape_folder() -> Callable[..., Path]:
    return write_shape_folder


def _train(out: Path, name: str, **data_args: int) -> visiontrain.Run:
    config = {"data": {"name": "synthetic", "args": data_args}, "train": {"epochs": 3, "log_every": 5},
              "out": str(out), "name": name}
    return visiontrain.train(config, quiet=True)


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> visiontrain.Run:
    """small_cnn trained 3 epochs on the full default synthetic set (RGB): ~100% val accuracy, seconds."""
    return _train(tmp_path_factory.mktemp("runs"), "rgb")


@pytest.fixture(scope="session")
def gray_run(tmp_path_factory: pytest.TempPathFactory) -> visiontrain.Run:
    """A 1-channel model (synthetic with channels=1), small: for input-conversion checks."""
    return _train(tmp_path_factory.mktemp("runs"), "gray", channels=1, train=800, val=100, test=100)


# Every task the project trains: the use commands' tests are parametrized over it (``task_run``). A new task
# is one entry here and one session fixture of a tiny trained run below.
TASKS = ("classification", "regression", "multilabel")
_TASK_RUNS = {"classification": "synthetic_run", "regression": "regression_run", "multilabel": "multilabel_run"}


def write_brightness_manifest(root: Path, count: int = 48, side: int = 16, seed: int = 0) -> Path:
    """``root/data.csv`` of ``path,value`` rows over gray PNGs whose target is their mean brightness (learnable)."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["path,value"]
    for i in range(count):
        value = float(rng.uniform(0, 1))
        pixels = np.clip(rng.normal(value * 255, 12, size=(side, side)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "imgs" / f"{i}.png")
        rows.append(f"imgs/{i}.png,{value:.4f}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


@pytest.fixture(scope="session")
def regression_run(tmp_path_factory: pytest.TempPathFactory) -> visiontrain.Run:
    """A tiny regression run (48 gray 16x16 images, train only: val is held out of it), 2 epochs, well under 1 s."""
    manifest = write_brightness_manifest(tmp_path_factory.mktemp("brightness"))
    config = {"data": str(manifest), "epochs": 2, "lr": 0.01, "batch_size": 16, "plots": False,
              "out": str(tmp_path_factory.mktemp("runs")), "name": "regression"}
    return visiontrain.train(config, quiet=True)


@pytest.fixture(scope="session")
def multilabel_run(tmp_path_factory: pytest.TempPathFactory) -> visiontrain.Run:
    """A small multi-label run: synthetic_multilabel (2-4 of 6 shapes per image), 256 train images, 2 epochs."""
    config = {"data": {"name": "synthetic_multilabel", "args": {"train": 256, "val": 64, "test": 64}}, "epochs": 2,
              "lr": 0.01, "batch_size": 32, "plots": False, "out": str(tmp_path_factory.mktemp("runs")),
              "name": "multilabel"}
    return visiontrain.train(config, quiet=True)


@pytest.fixture(scope="session", params=TASKS)
def task_run(request: pytest.FixtureRequest) -> visiontrain.Run:
    """A small trained run of each task in :data:`TASKS` (a test using it runs once per task)."""
    return request.getfixturevalue(_TASK_RUNS[request.param])
