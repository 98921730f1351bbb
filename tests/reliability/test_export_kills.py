"""Exports, evaluation reports and converted weights survive a SIGKILL at any moment of their writing.

Every trial is a real ``python -m visiontrain`` process, killed with SIGKILL — at a fault point
(``VISIONTRAIN_FAULT``: ``export-written/<format>`` after the temp is written and before it is verified,
``before-rename/<file>`` before each rename) or, in the slow tier, at a random moment after its first temp
appears — while a previous good export / report / pair is in place. Afterwards the target is the previous file
byte for byte or the whole new one, and it loads and predicts; a report folder holds one report's files or is
marked unfinished; a sidecar always matches its weights. The next run into the folder finishes the job and
leaves no temp (nor an unreferenced ONNX data file) behind.

Default tier: one kill in an ONNX export (the default format). Slow tier: one kill per other format and in
convert, and the campaign, every fault point of every writer (the report's too) plus timed kills; it prints its
counts (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

import visiontrain
from visiontrain.models import ModelInput, create_model
from visiontrain.models.doctor import convert_to_safetensors
from visiontrain.use.export import files as export_files
from visiontrain.use.export.runtime import load_exported
from visiontrain.use.export.write import FILE_NAMES, export, verify
from visiontrain.use.report import write_report

WRITERS = ["onnx", "onnx-external", "torchscript", "pt2"]  # onnx-external: weights in a data file beside it
_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
_EXTERNAL = ("import sys; import visiontrain.use.export.files as f; f.INLINE_LIMIT = 0; "
             "from visiontrain.cli import main; sys.exit(main(sys.argv[1:]))")


def _fmt(writer: str) -> str:
    return writer.removesuffix("-external")


def _spawn(writer: str, args: list[str | Path], fault: str | None, cwd: Path) -> subprocess.Popen:
    head = [sys.executable, "-c", _EXTERNAL] if writer == "onnx-external" else [sys.executable, "-m", "visiontrain"]
    env = {k: v for k, v in _ENV.items() if k != "VISIONTRAIN_FAULT"} | ({"VISIONTRAIN_FAULT": fault} if fault else {})
    return subprocess.Popen([*head, *map(str, args)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, kill: tuple[str, float] | None = None, folder: Path | None = None) -> bool:
    """Wait for the process. ``kill=(when, delay)`` SIGKILLs it ``delay`` seconds after its first temp appears in
    ``folder`` (``when="start"``) or after a temp there holds bytes (``"write"``: the write has begun). Returns
    whether it died of SIGKILL (by its fault point or by us)."""
    if kill is not None:
        when, delay = kill
        while proc.poll() is None and not any(size > 0 or when == "start" for size in _temps(folder).values()):
            time.sleep(0.0005)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode in (0, -signal.SIGKILL), (proc.returncode, out, err)
    return proc.returncode == -signal.SIGKILL


def _temps(folder: Path) -> dict[Path, int]:
    """The temp files in ``folder`` and their sizes."""
    found = {}
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):  # renamed while we look
            found[tmp] = tmp.stat().st_size
    return found


def _plan(rng: random.Random, faults: list[str], span: float) -> list[tuple[str | None, tuple[str, float] | None]]:
    """The fault points, then TIMED kills: half at a uniform moment of the ``span`` seconds from the first temp
    to the end of an unharmed run, half within 20 ms of the moment a temp starts to fill (the write itself)."""
    timed = [("start", rng.uniform(0.0, span)) if i % 2 else ("write", rng.uniform(0.0, 0.02)) for i in range(TIMED)]
    return [(fault, None) for fault in faults] + [(None, kill) for kill in timed]


def _span(proc: subprocess.Popen, folder: Path) -> float:
    """Seconds from the first temp in ``folder`` to the end of the process (an unharmed calibration run)."""
    while proc.poll() is None and not _temps(folder):
        time.sleep(0.0005)
    start = time.monotonic()
    assert not _finish(proc)
    return time.monotonic() - start


# ---- exports ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def previous(synthetic_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """A good export of each writer, as the files of its folder (an older export the kill must not destroy). The
    same model, with other metrics in its metadata: a new export differs from it byte for byte."""
    loaded = visiontrain.load(synthetic_run.dir, device="cpu")
    loaded.meta = {**loaded.meta, "metrics": {"previous_export": 1.0}}
    made = {}
    for writer in WRITERS:
        folder = tmp_path_factory.mktemp(writer)
        limit = export_files.INLINE_LIMIT
        export_files.INLINE_LIMIT = 0 if writer == "onnx-external" else limit
        try:
            export(loaded, _fmt(writer), folder)
        finally:
            export_files.INLINE_LIMIT = limit
        made[writer] = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert len(made["onnx-external"]) == 2  # model.onnx and its data file
    return made


def _place(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _check_export(folder: Path, writer: str, old: dict[str, bytes], run) -> str:
    """The target after a kill: the previous export byte for byte, or a whole new one; it predicts either way."""
    target = folder / FILE_NAMES[_fmt(writer)]
    loaded = visiontrain.load(run.dir, device="cpu")
    if target.read_bytes() == old[target.name]:
        state = "previous"
        assert all((folder / name).read_bytes() == data for name, data in old.items())  # its data file too
    else:
        state = "new"
        diff, scale = verify(loaded, target)
        assert diff <= 1e-3 * max(1.0, scale)
    x = torch.rand(3, 3, 32, 32)
    got = load_exported(target, device="cpu", trust_code=True).forward(x)
    assert torch.equal(got.argmax(1), loaded.model(x).argmax(1))
    return state


def _rerun_export(folder: Path, writer: str, run, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next export into the folder cleans what the killed one left: no temp, no unreferenced data file."""
    with monkeypatch.context() as m:
        m.setattr(export_files, "INLINE_LIMIT", 0 if writer == "onnx-external" else export_files.INLINE_LIMIT)
        export(run.dir, _fmt(writer), folder)
    names = sorted(p.name for p in folder.iterdir())
    target = FILE_NAMES[_fmt(writer)]
    if writer == "onnx-external":
        assert len(names) == 2 and names[0] == target and names[1].startswith(target + ".")
        assert names[1].encode() in (folder / target).read_bytes()
    else:
        assert names == [target]


EXPORT_FAULTS = {"onnx": "before-rename/model.onnx:1", "torchscript": "export-written/torchscript:1",
                 "pt2": "before-rename/model.pt2:1"}


# ---- report and convert -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reports(synthetic_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """The files of two different reports of the run (val and test split): the old one and the one to write."""
    sets = {}
    for split in ("val", "test"):
        folder = tmp_path_factory.mktemp(f"report-{split}")
        result = visiontrain.evaluate(str(synthetic_run.dir), split=split, outputs=True, mistakes=32)
        write_report(result, folder)
        sets[split] = {p.name: p.read_bytes() for p in folder.iterdir()}
    return sets


def _check_report(folder: Path, sets: dict[str, dict[str, bytes]]) -> str:
    """With a report.json, every file it lists is that report's (never a mix); without, it is unfinished."""
    mark = folder / "report.json"
    if not mark.exists():
        return "unfinished"
    state = next(split for split, files in sets.items() if files["report.json"] == mark.read_bytes())
    for name in json.loads(mark.read_text())["files"].values():
        assert (folder / name).read_bytes() == sets[state][name], name
    return {"val": "previous", "test": "new"}[state]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two different state_dict .pth files and their tensors."""
    folder = tmp_path_factory.mktemp("pth")
    out: dict[str, Any] = {}
    for seed, name in ((0, "old"), (1, "new")):
        torch.manual_seed(seed)
        path = folder / f"{name}.pth"
        torch.save(create_model("small_cnn", ModelInput(3, 32, 4)).state_dict(), path)
        out[name] = path
        out[f"{name}-weights"] = torch.load(path, weights_only=True)
    return out


def _place_pair(folder: Path, sources: dict[str, Any]) -> Path:
    folder.mkdir(parents=True)
    convert_to_safetensors(sources["old"], folder / "pair.safetensors")
    return folder / "pair.safetensors"


def _check_pair(target: Path, sources: dict[str, Any]) -> str:
    """A sidecar always describes the weights beside it; weights without one are whole (old or new)."""
    weights = target.read_bytes()
    tensors = safetensors.torch.load(weights)  # (not the bytes: the header's key order varies per process)
    state = next(state for state, key in (("previous", "old-weights"), ("new", "new-weights"))
                 if tensors.keys() == sources[key].keys() and all(torch.equal(tensors[k], v)
                                                                  for k, v in sources[key].items()))
    sidecar = target.with_suffix(".json")
    if not sidecar.exists():
        return f"{state}, unfinished"
    assert json.loads(sidecar.read_text())["weights"]["sha256"] == hashlib.sha256(weights).hexdigest()
    return state


def _convert_args(sources: dict[str, Any], target: Path) -> list:
    return ["checkpoint", "convert", sources["new"], "--to", "safetensors", "--out", target, "--force"]


# ---- default tier: one kill per writer ----------------------------------------------------------------------


@pytest.mark.parametrize("writer", [pytest.param(w, marks=[] if w == "onnx" else [pytest.mark.slow])
                                    for w in [*EXPORT_FAULTS, "convert"]])
def test_a_kill_in_an_export_or_convert_keeps_the_previous_file_and_the_next_run_cleans_up(
        writer: str, synthetic_run, previous, sources, tmp_path: Path, main_cli, monkeypatch) -> None:
    """One kill at a fault point (the default format's in the default tier; the report's is in the slow tier)."""
    if writer == "convert":
        pair = _place_pair(tmp_path / "pair", sources)
        assert _finish(_spawn("convert", _convert_args(sources, pair), "before-rename/pair.json:1", tmp_path))
        assert _check_pair(pair, sources) == "new, unfinished"  # the weights renamed in, the sidecar not yet
        r = main_cli("checkpoint", "convert", sources["new"], "--to", "safetensors", "--out", pair)  # no --force
        assert r.code == 0, r.err
        assert _check_pair(pair, sources) == "new" and sorted(p.name for p in pair.parent.iterdir()) == [
            "pair.json", "pair.safetensors"]
        return
    folder = _place(tmp_path / writer, previous[writer])
    proc = _spawn(writer, ["export", synthetic_run.dir, "--format", writer, "--out", folder], EXPORT_FAULTS[writer],
                  tmp_path)
    assert _finish(proc)  # it died of its SIGKILL
    assert list(folder.glob(".*.tmp")), writer  # the killed export's temp is there …
    assert _check_export(folder, writer, previous[writer], synthetic_run) == "previous"
    _rerun_export(folder, writer, synthetic_run, monkeypatch)  # … and the next export removes it


def test_a_failed_verification_leaves_the_previous_export_and_no_temp(synthetic_run, previous, tmp_path: Path) -> None:
    for writer in ("onnx", "torchscript", "pt2"):
        folder = _place(tmp_path / writer, previous[writer])
        with pytest.raises(visiontrain.errors.VisiontrainError, match="not kept"):
            export(synthetic_run.dir, writer, folder, tolerance=-1.0)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == previous[writer]


def test_onnx_external_data_is_replaced_with_its_model(synthetic_run, previous, tmp_path: Path, monkeypatch) -> None:
    folder = _place(tmp_path / "ext", previous["onnx-external"])
    (folder / "model.onnx.data").write_bytes(b"what an older visiontrain left")  # the plain name it used
    _rerun_export(folder, "onnx-external", synthetic_run, monkeypatch)
    assert set(os.listdir(folder)).isdisjoint(previous["onnx-external"].keys() - {"model.onnx"})
    _rerun_export(folder, "onnx", synthetic_run, monkeypatch)  # back to one file: the data file goes


def test_clean_leftovers_spares_a_running_writers_files(tmp_path: Path) -> None:
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    running = subprocess.Popen(["sleep", "60"])  # another export, still writing
    try:
        live = [tmp_path / f".model.pt2.{running.pid}-abc.tmp", tmp_path / f"model.onnx.{running.pid}-abc.data",
                tmp_path / f"model.onnx.{dead}-in_use.data"]  # the last: the one model.onnx names
        gone = [tmp_path / f".model.pt2.{dead}-xyz.tmp", tmp_path / f"model.onnx.{dead}-xyz.data",
                tmp_path / f".model.onnx.{dead}-q.data.r1"]  # the last: onnx_ir's temp folder of a dead writer
        mine = [tmp_path / ".notes.tmp", tmp_path / "other.onnx.data"]  # not visiontrain's: never touched
        (tmp_path / "model.onnx").write_bytes(f"... model.onnx.{dead}-in_use.data ...".encode())
        gone[-1].mkdir()
        for path in live + gone[:-1] + mine:
            path.write_bytes(b"x")
        assert sorted(export_files.clean_leftovers(tmp_path)) == sorted(gone)
        assert all(p.exists() for p in live + mine) and not any(p.exists() for p in gone)
    finally:
        running.kill()
        running.wait()


# ---- slow tier: the campaign --------------------------------------------------------------------------------

TIMED = 8  # kills at a random moment per writer (see _plan)
SEED = 13


@pytest.mark.slow
@pytest.mark.parametrize("writer", WRITERS)
def test_export_kill_campaign(writer: str, synthetic_run, previous, tmp_path: Path, monkeypatch) -> None:
    fmt = _fmt(writer)

    def trial(i: int, fault: str | None) -> tuple[subprocess.Popen, Path]:
        folder = _place(tmp_path / f"trial{i}", previous[writer])
        return _spawn(writer, ["export", synthetic_run.dir, "--format", fmt, "--out", folder], fault, tmp_path), folder

    def check(folder: Path) -> str:
        state = _check_export(folder, writer, previous[writer], synthetic_run)
        _rerun_export(folder, writer, synthetic_run, monkeypatch)
        return state

    faults = [f"export-written/{fmt}:1", f"before-rename/{FILE_NAMES[fmt]}:1"]
    _campaign(writer, faults, trial, check)


def _campaign(name: str, faults: list[str], trial, check) -> None:
    """Calibrate on an unharmed run, then kill at each fault point and at TIMED random moments; every trial is
    checked (and the next run's clean-up with it). Prints the counts for docs/reliability.md."""
    rng = random.Random(f"{SEED}-{name}")
    proc, folder = trial(0, None)
    span = _span(proc, folder)
    assert check(folder) == "new"
    states, killed = [], 0
    for i, (fault, kill) in enumerate(_plan(rng, faults, span), start=1):
        proc, folder = trial(i, fault)
        killed += _finish(proc, kill, folder)
        states.append(check(folder))
    counts = {s: states.count(s) for s in sorted(set(states))}
    print(f"\nkill campaign {name}: {len(states)} trials, {killed} SIGKILLed, after the kill: {counts}; "
          f"every target whole and every next run clean (span {span:.2f} s)")
    assert killed >= len(faults) + TIMED // 2  # the fault points always kill; most timed kills land in time


REPORT_FILES = ["confusion.png", "confusion_counts.png", "reliability.png", "mistakes.png", "report.md",
                "report.json"]


@pytest.mark.slow
def test_report_kill_campaign(synthetic_run, reports, tmp_path: Path, main_cli) -> None:
    def trial(i: int, fault: str | None) -> tuple[subprocess.Popen, Path]:
        folder = _place(tmp_path / f"trial{i}", reports["val"])
        return _spawn("report", ["evaluate", synthetic_run.dir, "--report", folder], fault, tmp_path), folder

    def check(folder: Path) -> str:
        state = _check_report(folder, reports)
        assert main_cli("evaluate", synthetic_run.dir, "--report", folder).code == 0
        assert _check_report(folder, reports) == "new" and not list(folder.glob(".*"))
        return state

    _campaign("report", [f"before-rename/{name}:1" for name in REPORT_FILES], trial, check)


@pytest.mark.slow
def test_convert_kill_campaign(sources, tmp_path: Path, main_cli) -> None:
    def trial(i: int, fault: str | None) -> tuple[subprocess.Popen, Path]:
        target = _place_pair(tmp_path / f"trial{i}", sources)
        return _spawn("convert", _convert_args(sources, target), fault, tmp_path), target.parent

    def check(folder: Path) -> str:
        state = _check_pair(folder / "pair.safetensors", sources)
        assert main_cli(*_convert_args(sources, folder / "pair.safetensors")).code == 0
        assert _check_pair(folder / "pair.safetensors", sources) == "new" and len(os.listdir(folder)) == 2
        return state

    _campaign("convert", ["before-rename/pair.safetensors:1", "before-rename/pair.json:1"], trial, check)
