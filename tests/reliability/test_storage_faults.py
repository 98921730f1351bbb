"""A full disk, a file-size limit and a read-only run folder in the middle of a real training: one clear line and
exit code 2, the last good checkpoint intact, and ``--resume`` continues once the storage is fixed.

Real faults, real processes: the CLI runs in a subprocess whose run folder is a 3 MiB tmpfs that is filled up
when the second epoch starts, or gets ``RLIMIT_FSIZE`` (writes past N bytes fail with EFBIG), or is re-mounted
read-only (a bind mount; chmod means nothing to root). The mount-based cases skip where mounting is not allowed;
the default tier runs the file-size case (no mount needed), the slow tier all three and the resume after them.
Cheaper in-process checks cover the atomic writer itself (a refused rename, a failed fsync) and the CLI's
handling of storage errors raised outside it (TensorBoard's writer thread, log files)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import visiontrain
from visiontrain.checkpoint.format import read_sidecar
from visiontrain.engine.resume import read_resume
from visiontrain.errors import VisiontrainError
from visiontrain.fileio import atomic_write_bytes, storage_error

# Runs the real CLI (`visiontrain.cli.main`) with a storage fault applied when the second epoch starts.
DRIVER = '''
import resource, signal, subprocess, sys
from pathlib import Path

import visiontrain.trainer.training as runner
from visiontrain.cli import main
from visiontrain.engine.callbacks import Callback

fault, where = sys.argv[1], Path(sys.argv[2])


def fill(folder):
    with open(folder / "filler", "wb") as fh:
        try:
            while True:
                fh.write(bytes(65536))
                fh.flush()
        except OSError:
            pass


def fsize(limit):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit.name), int(limit.name)))


def readonly(folder):
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)


class Fault(Callback):
    def on_epoch_start(self, state):
        if state.epoch == 1:
            {"fill": fill, "fsize": fsize, "readonly": readonly}[fault](where)


original = runner.train
runner.train = lambda cfg, **kw: original(cfg, callbacks=[Fault()], **kw)
sys.exit(main(sys.argv[3:]))
'''
TRAIN = ["train", "--data", "synthetic", "--data-arg", "train=64", "--data-arg", "val=16", "--data-arg", "test=16",
         "--epochs", "3", "--batch-size", "32", "--quiet", "--name", "r"]
RESUME_LIMIT = 300_000  # bytes: the checkpoints (117 KB) fit, the resume file (372 KB) does not


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _run_faults(root: Path, commands, only: str | None = None) -> Iterator[dict[str, tuple[Path, object]]]:
    """The faults (all three at the same time, or ``only`` one): {fault: (run folder, CLI result)}."""
    (root / "driver.py").write_text(DRIVER)
    folders = {name: root / name for name in ("fill", "fsize", "readonly")}
    for folder in folders.values():
        folder.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folders["fill"]))
    (folders["fsize"] / str(RESUME_LIMIT)).mkdir()
    argv = {
        "fsize": ["fsize", folders["fsize"] / str(RESUME_LIMIT)],
        **({"fill": ["fill", folders["fill"]], "readonly": ["readonly", folders["readonly"] / "r"]} if mounted else {}),
    }
    argv = {name: a for name, a in argv.items() if only in (None, name)}
    results = commands({name: [sys.executable, root / "driver.py", *a, *TRAIN, "--out", folders[name]]
                        for name, a in argv.items()}, cwd=root)
    yield {name: (folders[name] / "r", results[name]) for name in argv}
    for path in (folders["readonly"] / "r", folders["fill"]):
        with contextlib.suppress(Exception):
            subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def faulted(tmp_path_factory: pytest.TempPathFactory, commands) -> Iterator[dict[str, tuple[Path, object]]]:
    yield from _run_faults(tmp_path_factory.mktemp("storage"), commands)


@pytest.fixture(scope="module")
def fsize_faulted(tmp_path_factory: pytest.TempPathFactory, commands) -> Iterator[dict[str, tuple[Path, object]]]:
    """The default tier's case: the file-size limit needs no mount, so it runs everywhere."""
    yield from _run_faults(tmp_path_factory.mktemp("storage-fsize"), commands, only="fsize")


CASES = {"fill": "No space left on device", "fsize": "File too large", "readonly": "Read-only file system"}


@pytest.mark.parametrize("fault", [pytest.param(f, marks=[] if f == "fsize" else [pytest.mark.slow]) for f in CASES])
def test_a_storage_fault_mid_training_is_one_line_and_the_last_checkpoint_survives(
        fault: str, request: pytest.FixtureRequest, one_line_error) -> None:
    faulted = request.getfixturevalue("fsize_faulted" if fault == "fsize" else "faulted")
    if fault not in faulted:
        pytest.skip("mounting a tmpfs / read-only bind mount is not permitted here")
    run, result = faulted[fault]
    line = one_line_error(result, CASES[fault], "the last good checkpoint is intact" if fault == "readonly"
                          else "intact")
    assert str(run) in line or "cannot write to disk" in line
    # Epoch 1's files are whole and load; nothing half-written is left beside them.
    last = read_sidecar(run / "checkpoints" / "last.json")
    assert last["epoch"] == 1
    assert visiontrain.load(run / "checkpoints" / "last.json").classes == last["classes"]
    visiontrain.load(run)  # best
    meta, _ = read_resume(run / "checkpoints" / "resume.safetensors")
    assert (meta["epoch"], meta["batch_in_epoch"]) == (1, 0)
    assert not list((run / "checkpoints").glob(".*.tmp"))


@pytest.mark.slow
def test_once_the_storage_is_fixed_resume_finishes_the_run(faulted: dict, commands) -> None:
    fixed = {}
    if "fill" in faulted:
        (faulted["fill"][0].parent / "filler").unlink()
        fixed["fill"] = faulted["fill"][0]
    if "readonly" in faulted:
        subprocess.run(["umount", str(faulted["readonly"][0])], check=True)
        fixed["readonly"] = faulted["readonly"][0]
    fixed["fsize"] = faulted["fsize"][0]  # the limit died with its process
    results = commands({name: [sys.executable, "-m", "visiontrain", "train", "--resume", run, "--quiet"]
                        for name, run in fixed.items()}, cwd=fixed["fsize"].parent)
    for name, run in fixed.items():
        assert results[name].code == 0, (name, results[name].err)
        assert read_sidecar(run / "checkpoints" / "last.json")["epoch"] == 3


# -- the atomic writer and the CLI, in process ---------------------------------------------------------------

def test_a_refused_rename_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    """A read-only folder, simulated: root ignores chmod, so os.replace is made to refuse."""
    target = tmp_path / "best.safetensors"
    target.write_bytes(b"old and good")

    def refuse(*_args: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(VisiontrainError, match=r"cannot write .*best\.safetensors: Permission denied; the "
                                               r"previous file, if any, is intact"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old and good"
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]


def test_a_full_disk_at_fsync_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "last.json"
    target.write_text("{}")

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(VisiontrainError, match="No space left on device"):
        atomic_write_bytes(target, b'{"new": 1}')
    assert target.read_text() == "{}" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize(("code", "text"), [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only"),
                                            (errno.EDQUOT, "Disk quota exceeded"), (errno.EFBIG, "File too large")])
def test_storage_errors_raised_anywhere_in_a_command_are_one_line(code: int, text: str, monkeypatch, main_cli,
                                                                  one_line_error) -> None:
    import visiontrain.trainer.training

    def boom(*_args: object, **_kw: object) -> None:
        raise OSError(code, os.strerror(code), "runs/x/metrics.jsonl")

    monkeypatch.setattr(visiontrain.trainer.training, "train", boom)
    one_line_error(main_cli("train", "--data", "synthetic"), "cannot write runs/x/metrics.jsonl", text,
                   "--resume RUN")


def test_other_os_errors_stay_bugs_with_a_traceback() -> None:
    assert storage_error(OSError(errno.ENOENT, "No such file or directory")) is None
    assert storage_error(ValueError("x")) is None


def test_a_writer_threads_full_disk_is_left_to_the_main_thread(capsys) -> None:
    from visiontrain.cli import _thread_errors

    def run(exc: BaseException) -> str:
        thread = threading.Thread(target=lambda: None)
        _thread_errors(threading.ExceptHookArgs([type(exc), exc, None, thread]))
        return capsys.readouterr().err

    assert run(OSError(errno.ENOSPC, "No space left on device")) == ""
    assert "ValueError: a bug" in run(ValueError("a bug"))
