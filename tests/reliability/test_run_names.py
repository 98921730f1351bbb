"""Two runs with the same ``--name`` never overwrite each other: the second gets a -2 suffix, also when both start
at the same moment; ``--overwrite`` replaces the old run only when asked, only a visiontrain run folder, and
only once the new run has started (a new run that fails before that leaves the old one whole)."""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from visiontrain.checkpoint.format import read_sidecar
from visiontrain.config import RunConfig
from visiontrain.trainer.folders import make_run_dir

TINY = ["--data", "synthetic", "--data-arg", "train=48", "--data-arg", "val=16", "--data-arg", "test=16",
        "--epochs", "1", "--batch-size", "16", "--quiet"]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_same_name_twice_gives_a_suffix_and_leaves_the_first_run_alone(tmp_path: Path, main_cli) -> None:
    runs = tmp_path / "runs"
    assert main_cli("train", *TINY, "--out", runs, "--name", "exp").code == 0
    before = _digest(runs / "exp")
    r = main_cli("train", *TINY, "--out", runs, "--name", "exp", "--seed", "1")
    assert r.code == 0, r.err
    assert sorted(p.name for p in runs.iterdir()) == ["exp", "exp-2"]
    assert _digest(runs / "exp") == before
    assert read_sidecar(runs / "exp-2" / "checkpoints" / "last.json")["config"]["train"]["seed"] == 1


def test_many_runs_created_at_once_with_one_name_get_a_folder_each(tmp_path: Path) -> None:
    cfg = RunConfig(out=str(tmp_path), name="same")
    with ThreadPoolExecutor(16) as pool:
        folders = list(pool.map(lambda _: make_run_dir(cfg), range(32)))
    assert len(set(folders)) == 32
    assert {p.name for p in folders} == {"same", *(f"same-{i}" for i in range(2, 33))}


@pytest.mark.slow
def test_two_runs_started_at_once_with_one_name_get_two_folders(tmp_path: Path, commands) -> None:
    argv = [sys.executable, "-m", "visiontrain", "train", *TINY, "--out", "runs", "--name", "same"]
    results = commands({"a": argv, "b": [*argv, "--seed", "1"]}, cwd=tmp_path)
    assert all(r.code == 0 for r in results.values()), {k: r.err for k, r in results.items()}
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["same", "same-2"]
    seeds = {read_sidecar(runs / n / "checkpoints" / "last.json")["config"]["train"]["seed"]
             for n in ("same", "same-2")}
    assert seeds == {0, 1}  # each folder holds one whole run, not a mix


def test_overwrite_replaces_the_old_run_once_the_new_one_has_started(tmp_path: Path, main_cli) -> None:
    runs = tmp_path / "runs"
    assert main_cli("train", *TINY, "--out", runs, "--name", "exp").code == 0
    (runs / "exp" / "old-note.txt").write_text("from the first run")
    r = main_cli("train", *TINY, "--out", runs, "--name", "exp", "--seed", "3", "--overwrite")
    assert r.code == 0, r.err
    assert [p.name for p in runs.iterdir()] == ["exp"]  # no suffix, and nothing set aside left behind
    assert not (runs / "exp" / "old-note.txt").exists()
    assert read_sidecar(runs / "exp" / "checkpoints" / "last.json")["config"]["train"]["seed"] == 3


def test_overwrite_keeps_the_old_run_when_the_new_one_fails_before_starting(tmp_path: Path, main_cli,
                                                                            one_line_error) -> None:
    runs = tmp_path / "runs"
    assert main_cli("train", *TINY, "--out", runs, "--name", "exp").code == 0
    before = _digest(runs / "exp")
    one_line_error(main_cli("train", *TINY, "--out", runs, "--name", "exp", "--overwrite", "--model", "nope"),
                   "nope")
    assert [p.name for p in runs.iterdir()] == ["exp"] and _digest(runs / "exp") == before


def test_overwrite_never_replaces_a_folder_that_is_not_a_run(tmp_path: Path, main_cli, one_line_error) -> None:
    data = tmp_path / "photos"
    data.mkdir()
    (data / "holiday.jpg").write_bytes(b"precious")
    one_line_error(main_cli("train", *TINY, "--out", tmp_path, "--name", "photos", "--overwrite"),
                   f"{data} is not a visiontrain run folder", "not replaced")
    assert (data / "holiday.jpg").read_bytes() == b"precious"


def test_overwrite_and_resume_do_not_mix(tmp_path: Path, main_cli, one_line_error) -> None:
    one_line_error(main_cli("train", "--resume", tmp_path, "--overwrite"), "drop --overwrite")
