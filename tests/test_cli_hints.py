"""What newcomers type first, from the README's peers (Ultralytics, timm's train.py, fastai): their dataset given
as --data-dir, their flags. Each gets one line that says what visiontrain calls it, exit code 2."""

from __future__ import annotations

import argparse
import functools
import itertools
import shlex
from pathlib import Path

import pytest

from visiontrain.cli import build_parser
from visiontrain.config import keys


@pytest.mark.parametrize("layout", ["classes", "train-val"])
def test_a_dataset_given_as_data_dir_is_one_line_naming_data(tmp_path: Path, shape_folder, main_cli, one_line_error,
                                                              layout: str) -> None:
    root = tmp_path / "pets"
    if layout == "classes":
        shape_folder(root, per_class=1, size=16)
    else:
        shape_folder(root / "train", per_class=1, size=16)
        shape_folder(root / "valid", per_class=1, size=16)
    for command in ("train", "lr-find"):
        one_line_error(main_cli(command, "--data-dir", root, "--no-download"),
                       f"--data-dir {root} holds class folders (", f"use --data {root}")


def test_a_download_cache_as_data_dir_is_still_a_cache(tmp_path: Path, main_cli, one_line_error) -> None:
    raw = tmp_path / "cache" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"")
    line = one_line_error(main_cli("train", "--data-dir", tmp_path / "cache", "--no-download"))
    assert "holds class folders" not in line and "MNIST" in line


# --- flags from the peers --------------------------------------------------------------------------------------

def _peers() -> list[tuple[str, str]]:
    return [(peer, leaf.flag) for leaf in keys() for peer in leaf.knob.peers]


def _typed(peer: str) -> str:
    return f"-{peer}" if len(peer) == 1 else "--" + peer.replace("_", "-")


def _train_actions() -> list[argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]._actions


@functools.cache
def _train_flags() -> list[str]:
    return [f for a in _train_actions() for f in a.option_strings]


def _abbreviates(peer: str) -> list[str]:
    """The flags argparse could take the typed peer for, as a prefix (--sched is --schedule): one, and it simply
    works; several, and argparse's own one-line error lists them (--batch could match --batch-size, …)."""
    return [flag for flag in _train_flags() if flag.startswith(_typed(peer))]


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory: pytest.TempPathFactory, cli, one_line_error) -> dict[str, str]:
    """ONE real `visiontrain train` process given every peer name, as a flag and as Ultralytics' name=value;
    typed → the flag its one-line error says to use instead."""
    argv: list[str] = []
    values: dict[str, str] = {}
    for i, (peer, _flag) in enumerate(_peers()):
        if not _abbreviates(peer):
            argv += [_typed(peer), f"v{i}f"]
            values[f"v{i}f"] = _typed(peer)
        argv.append(f"{peer}=v{i}k")
        values[f"v{i}k"] = f"{peer}="
    r = cli("train", *argv, cwd=tmp_path_factory.mktemp("hints"))
    line = one_line_error(r, "unrecognized arguments: ", "; write them as: ")
    said = shlex.split(line.split("; write them as: ")[1].split("; see `visiontrain train --help`")[0])
    return {values[value]: flag for flag, value in itertools.pairwise(said) if value in values}


@pytest.mark.parametrize(("peer", "flag"), _peers(), ids=[p for p, _ in _peers()])
def test_every_peer_name_gets_the_visiontrain_flag(rewritten: dict[str, str], main_cli, one_line_error, peer: str,
                                                   flag: str) -> None:
    assert rewritten[f"{peer}="] == flag  # epochs=3 → --epochs 3
    prefix_of = _abbreviates(peer)
    if len(prefix_of) == 1:  # --sched cosine is --schedule cosine already
        assert prefix_of == [flag]
    elif prefix_of:
        one_line_error(main_cli("train", _typed(peer), "1"), f"ambiguous option: {_typed(peer)} could match {flag}")
    else:
        assert rewritten[_typed(peer)] == flag  # --imgsz 64 → --image-size 64


@pytest.mark.parametrize(("argv", "said"), [
    (["--img-size", "64"], "write them as: --image-size 64;"),
    (["--imgsz=64", "-b", "16"], "write them as: --image-size=64 --batch-size 16;"),
    (["--output", "out", "--project", "p"], "write them as: --out out --out p;"),
    (["epochs=3", "imgsz=64"], "write them as: --epochs 3 --image-size 64;"),
    (["--colour", "red"], "unrecognized arguments: --colour red; see `visiontrain train --help`"),
])
def test_the_issue_s_examples(main_cli, one_line_error, argv: list[str], said: str) -> None:
    one_line_error(main_cli("train", *argv), said)


def test_other_commands_say_their_own_flags(main_cli, one_line_error, tmp_path: Path) -> None:
    one_line_error(main_cli("evaluate", tmp_path, "-b", "4"), "-b 4; write them as: --batch-size 4; see `visiontrain "
                   "evaluate --help`")
    one_line_error(main_cli("predict", tmp_path, "x.png", "--topk", "3"), "write them as: --top-k 3;")
    one_line_error(main_cli("data", "info", tmp_path, "--imgsz", "3"), "see `visiontrain data info --help`")


def test_peer_names_are_no_visiontrain_name_and_belong_to_one_key() -> None:
    own = {n.replace("-", "_") for leaf in keys() for n in (leaf.flag.lstrip("-"), *leaf.flat_names)}
    peers = [peer for peer, _ in _peers()]
    assert len(peers) == len(set(peers))
    assert not own & set(peers)
