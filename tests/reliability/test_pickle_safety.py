"""Loading never runs code from a file: a pickle crafted to run code on unpickling is refused by every command
that takes a weights file, and the code provably does not run (its marker file never appears). Only
``--trust-pickle`` unpickles a whole model — with a warning — and then the file's code does run, as documented.
Also: visiontrain refuses to import with a torch older than 2.10."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import visiontrain
from visiontrain.errors import CheckpointError
from visiontrain.models import ModelInput, create_model
from visiontrain.models.doctor import inspect_weights
from visiontrain.versions import TorchTooOld, check_torch

TINY = ["--data", "synthetic", "--data-arg", "train=48", "--data-arg", "val=16", "--data-arg", "test=16",
        "--epochs", "1", "--batch-size", "16", "--quiet"]


class _RunsCode:
    """Unpickling this calls ``exec`` on its source: what a hostile checkpoint does."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple:
        return (exec, (self.source,))


def _hostile(folder: Path, kind: str) -> tuple[Path, Path]:
    """A weights file that writes ``marker`` when unpickled, in one of the ways such files come."""
    marker = folder / f"RAN-{kind}"
    payload = {"fc.weight": torch.zeros(4, 8), "fc.bias": torch.zeros(4),
               "hook": _RunsCode(f"open({str(marker)!r}, 'w').write('code from the checkpoint ran')")}
    path = folder / f"hostile-{kind}.pth"
    if kind == "zip":  # torch.save's default archive
        torch.save(payload, path)
    elif kind == "legacy":  # torch.save before 1.6: a bare pickle stream
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:  # a plain pickle named .pth
        import pickle

        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path, marker


KINDS = ["zip", "legacy", "raw"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_pickle_is_refused_by_every_command_and_its_code_never_runs(
        kind: str, tmp_path: Path, main_cli, one_line_error) -> None:
    path, marker = _hostile(tmp_path, kind)
    runs = tmp_path / "runs"
    commands = [
        ["checkpoint", "inspect", path],
        ["checkpoint", "convert", path, "--to", "safetensors"],
        ["train", *TINY, "--out", runs, "--pretrained", path],
        ["train", *TINY, "--out", runs, "--init-from", path],
        ["predict", path, tmp_path / "x.png"],
        ["evaluate", path],
    ]
    for argv in commands:
        line = one_line_error(main_cli(*argv), str(path))
        assert "pickle" in line, (argv, line)
        assert not marker.exists(), f"{argv}: the checkpoint's code ran"
    assert not (tmp_path / f"hostile-{kind}.safetensors").exists()
    assert not runs.exists() or not any(runs.iterdir())  # refused before any run folder was made
    with pytest.raises(CheckpointError):
        visiontrain.load(path)
    assert not marker.exists()


def test_the_refusal_says_what_to_do(tmp_path: Path, main_cli, one_line_error) -> None:
    path, _ = _hostile(tmp_path, "zip")
    one_line_error(main_cli("checkpoint", "inspect", path), "not a plain state_dict", "can run code",
                   "torch.save(model.state_dict(), path)", "--trust-pickle")


@pytest.mark.parametrize("suffix", [".torchscript.pt", ".pt2"])
def test_a_hostile_pickle_named_like_an_export_is_refused_too(suffix: str, tmp_path: Path, main_cli,
                                                              one_line_error) -> None:
    path, marker = _hostile(tmp_path, "zip")
    export = path.rename(tmp_path / f"model{suffix}")
    one_line_error(main_cli("predict", export, tmp_path / "x.png"), str(export))
    assert not marker.exists()


def test_trust_pickle_warns_and_then_really_runs_the_files_code(tmp_path: Path, main_cli) -> None:
    """What --trust-pickle means, shown honestly: the warning is printed, and the file's code runs."""
    path, marker = _hostile(tmp_path, "zip")
    r = main_cli("train", *TINY, "--out", tmp_path / "runs", "--pretrained", path, "--trust-pickle")
    assert "warning: --trust-pickle: unpickling" in r.err and "runs any code the file carries" in r.err
    assert marker.read_text() == "code from the checkpoint ran"
    assert r.code == 2  # (its tensors are no small_cnn: refused after unpickling, too late to stop the code)


@pytest.fixture
def whole_model(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """The seeds' "method 1": torch.save(model) of a small_cnn for the synthetic data (3x32x32, 4 classes)."""
    torch.manual_seed(0)
    model = create_model("small_cnn", ModelInput(3, 32, 4))
    path = tmp_path / "method1.pth"
    torch.save(model, path)
    return path, model


def test_trust_pickle_loads_a_whole_model_everywhere_with_a_warning(whole_model, tmp_path: Path, main_cli,
                                                                    one_line_error) -> None:
    path, model = whole_model
    runs = tmp_path / "runs"
    one_line_error(main_cli("train", *TINY, "--out", runs, "--pretrained", path), "not a plain state_dict")
    for flag, name in (("--pretrained", "pre"), ("--init-from", "init")):
        r = main_cli("train", *TINY, "--out", runs, "--name", name, flag, path, "--trust-pickle")
        assert r.code == 0, r.err
        assert f"warning: --trust-pickle: unpickling {path} in full" in r.err
    assert (runs / "init" / "init_report.json").is_file()
    info = inspect_weights(path, trust_pickle=True)
    assert info["tensors"] == len(model.state_dict())
    r = main_cli("checkpoint", "convert", path, "--to", "safetensors", "--trust-pickle")
    assert r.code == 0 and "warning: --trust-pickle" in r.err
    converted = visiontrain.checkpoint.weights.read_weights(tmp_path / "method1.safetensors")
    assert all(torch.equal(converted.tensors[k], v) for k, v in model.state_dict().items())


def test_torch_older_than_2_10_is_refused_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    for old in ("2.9.1", "2.5.1+cu121", "1.13.0", "garbage"):
        with pytest.raises(TorchTooOld, match=r"needs torch >= 2\.10 \(found .*\).*pip install --upgrade"):
            check_torch(old)
    for fine in ("2.10.0", "2.14.1+cu130", "3.0.0a0+git123"):
        check_torch(fine)
    monkeypatch.setattr(torch, "__version__", "2.9.0")
    with pytest.raises(TorchTooOld):
        check_torch()


def test_importing_visiontrain_with_an_old_torch_fails_in_one_clear_line() -> None:
    code = "import torch; torch.__version__ = '2.9.0'; import visiontrain"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("visiontrain.versions.TorchTooOld: visiontrain needs torch >= 2.10 (found 2.9.0)")
