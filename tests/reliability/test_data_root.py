"""Data folders stay inside their root: real folders with real symlinks (to /usr/share, to a folder outside the
root, to ``..``, in a loop, into another class's folder, to a file inside or outside the root), with and without
``--follow-symlinks``; the classes and counts are exactly right and every skipped link is counted and reported
(the run's first lines, ``data info``, ``skipped_links.txt``). A manifest with a root keeps its relative paths
in it. ``train`` warns, in one line, about the duplicates and train/val leakage ``data info`` finds.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from visiontrain.config import DataConfig
from visiontrain.data.audit import start_lines
from visiontrain.data.sources import load_source
from visiontrain.errors import DataError

NOT_FOLLOWED, OUTSIDE, OTHER, LOOP = "not followed", "outside the data root", "another class", "already walked"


@pytest.fixture
def tree(tmp_path: Path, shape_folder: Any) -> Path:
    """shapes/{circle,square,triangle,cross}/000-002.png, and links of every kind (see the expectations below)."""
    root = shape_folder(tmp_path / "shapes", 3, size=16)
    outside = shape_folder(tmp_path / "elsewhere", 2, size=16, seed=5)
    os.symlink("/usr/share", root / "square" / "usr")  # thousands of system icons
    os.symlink("..", root / "square" / "loop")  # the data root itself: every class again
    os.symlink(outside / "circle", root / "circle" / "more")  # a folder outside the root
    os.symlink(root / "cross", root / "circle" / "crosses")  # another class's folder
    os.symlink("../triangle/000.png", root / "circle" / "borrowed.png")  # a file inside the root: used
    os.symlink(outside / "cross" / "000.png", root / "circle" / "stolen.png")  # a file outside: skipped
    (root / ".pool" / "extra").mkdir(parents=True)  # inside the root, in no class
    shutil.copy(outside / "cross" / "001.png", root / ".pool" / "extra" / "x.png")
    os.symlink("../.pool/extra", root / "cross" / "extra")  # followed with --follow-symlinks only
    (root / "triangle" / "sub").mkdir()
    shutil.copy(outside / "triangle" / "001.png", root / "triangle" / "sub" / "y.png")
    os.symlink("sub", root / "triangle" / "again")  # the same folder twice
    os.symlink(root / "triangle", root / "kitty")  # a class folder that is another class
    return root


EXPECTED = {  # follow → (images per class, skipped link name → reason)
    False: ({"circle": 4, "cross": 3, "square": 3, "triangle": 4},
            {"usr": NOT_FOLLOWED, "loop": NOT_FOLLOWED, "more": NOT_FOLLOWED, "crosses": NOT_FOLLOWED,
             "stolen.png": OUTSIDE, "extra": NOT_FOLLOWED, "again": NOT_FOLLOWED, "kitty": NOT_FOLLOWED}),
    True: ({"circle": 4, "cross": 4, "square": 3, "triangle": 4},
           {"usr": OUTSIDE, "loop": LOOP, "more": OUTSIDE, "crosses": OTHER, "stolen.png": OUTSIDE, "again": LOOP,
            "kitty": OTHER}),
}


def _counts(source: Any) -> dict[str, int]:
    labels = source.splits["train"].labels.tolist()
    return {name: labels.count(i) for i, name in enumerate(source.classes)}


@pytest.mark.parametrize("follow", [False, True])
def test_classes_and_counts_are_exact_and_every_skipped_link_is_counted(tree: Path, follow: bool) -> None:
    source = load_source(DataConfig(name=str(tree), val_split=0.0, follow_symlinks=follow), 0)
    per_class, skipped = EXPECTED[follow]
    assert _counts(source) == per_class
    paths = {str(p) for p in source.splits["train"].paths}
    assert not [p for p in paths if not os.path.realpath(p).startswith(str(tree.resolve()) + os.sep)]
    assert str(tree / "circle" / "borrowed.png") in paths  # a file link inside the root is an image like any
    assert (str(tree / "cross" / "extra" / "x.png") in paths) == follow
    reasons = {Path(link).name: reason for link, _, reason in source.skipped_links}
    assert reasons.keys() == skipped.keys()
    for name, why in skipped.items():
        assert why in reasons[name], (name, reasons[name])
    notes = [n for n in source.notes if "symlink" in n]
    assert len(notes) == 1 and notes[0].startswith(f"skipped {len(skipped)} symlink(s) in the data folder"), notes
    assert source.bad_images == []


def test_data_info_reports_the_skipped_links(tree: Path, main_cli: Any) -> None:
    for flags, follow in (([], False), (["--follow-symlinks"], True)):
        result = main_cli("data", "info", tree, "--val-split", "0", *flags, "--json")
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["splits"]["train"]["per_class"] == EXPECTED[follow][0]
        assert {Path(s["link"]).name for s in report["skipped_links"]} == EXPECTED[follow][1].keys()
    text = main_cli("data", "info", tree, "--val-split", "0").out
    assert f"skipped link: {tree / 'square' / 'usr'} -> /usr/share: folder symlink, not followed" in text
    assert "note: skipped 8 symlink(s) in the data folder (7 folder link(s) not followed" in text


def test_train_reports_skipped_links_in_its_first_lines_and_the_run_folder(tree: Path, tmp_path: Path,
                                                                            main_cli: Any) -> None:
    result = main_cli("train", "--data", tree, "--model", "mlp", "--epochs", "1", "--batch-size", "8", "--val-split",
                      "0", "--device", "cpu", "--out", tmp_path / "runs", "--name", "r")
    assert result.code == 0, result.err
    first = result.err.splitlines()[:5]
    assert any(line.startswith("note: skipped 8 symlink(s) in the data folder") for line in first), first
    lines = (tmp_path / "runs" / "r" / "skipped_links.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 8 and f"{tree / 'square' / 'usr'}\t/usr/share\t" in "\n".join(lines)
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text(encoding="utf-8"))
    assert summary["data"]["counts"]["train"] == sum(EXPECTED[False][0].values())


@pytest.mark.parametrize("link", ["val->train", "val->outside", "train->root"])
@pytest.mark.parametrize("follow", [False, True])
def test_a_split_folder_symlink_that_is_refused_is_one_line(tmp_path: Path, shape_folder: Any, link: str,
                                                            follow: bool) -> None:
    root = tmp_path / "d"
    shape_folder(root / ("val" if link.startswith("train") else "train"), 2, size=16)
    outside = shape_folder(tmp_path / "elsewhere", 2, size=16)
    name, target = link.split("->")
    os.symlink({"train": root / "train", "outside": outside, "root": root}[target], root / name)
    with pytest.raises(DataError) as info:
        load_source(DataConfig(name=str(root), follow_symlinks=follow), 0)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{root / name} is a symlink to ")
    why = "does not follow" if not follow else {"train": "another split", "outside": OUTSIDE, "root": "already"}[target]
    assert why in message, message


def test_a_split_folder_symlink_inside_the_root_is_followed_when_asked(tmp_path: Path, shape_folder: Any) -> None:
    root = tmp_path / "d"
    shape_folder(root / "train", 3, size=16)
    shape_folder(root / ".store" / "val", 1, size=16, seed=3)
    os.symlink(".store/val", root / "val")
    source = load_source(DataConfig(name=str(root), follow_symlinks=True), 0)
    assert len(source.splits["train"]) == 12 and len(source.splits["val"]) == 4
    assert str(source.splits["val"].paths[0]).startswith(str(root / "val") + os.sep)


def _manifest(tmp_path: Path, rows: list[str]) -> Path:
    (tmp_path / "images" / "a").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (12, 12), (60 * i, 10, 10)).save(tmp_path / "images" / "a" / f"{i}.png")
    path = tmp_path / "lists" / "m.csv"
    path.parent.mkdir()
    path.write_text("path,label\n" + "".join(f"{r}\n" for r in rows), encoding="utf-8")
    return path


def test_a_manifest_path_that_leaves_its_root_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = _manifest(tmp_path, ["a/0.png,x", "a/../a/1.png,y", "../lists/../images/a/2.png,x", "../b.png,x"])
    Image.new("RGB", (12, 12)).save(tmp_path / "b.png")
    root = str(tmp_path / "images")
    with pytest.raises(DataError) as info:
        load_source(DataConfig(name=str(path), val_split=0.0, args={"root": root}), 0)
    assert str(info.value).startswith(f"manifest {path}, line 5: path '../b.png' leads outside the data root {root}")
    # Without a root, paths are relative to the manifest's folder and may leave it (lists/ beside images/);
    # an absolute path is used as written.
    ok = _manifest(tmp_path / "b", ["../images/a/0.png,x", f"{tmp_path / 'b' / 'images' / 'a' / '1.png'},y"])
    assert len(load_source(DataConfig(name=str(ok), val_split=0.0), 0).splits["train"]) == 2


def _leaky(root: Path) -> Path:
    """train/val class folders; one val image is a copy of a train image, and train holds one duplicate."""
    for split, n in (("train", 6), ("val", 2)):
        for c, colour in (("ant", 30), ("bee", 200)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), (colour, 10 * i + (100 if split == "val" else 0), 90)).save(
                    root / split / c / f"{i}.png")
    shutil.copy(root / "train" / "ant" / "3.png", root / "val" / "ant" / "copy.png")
    shutil.copy(root / "train" / "bee" / "1.png", root / "train" / "bee" / "again.png")
    return root


def test_train_warns_in_one_line_about_duplicates_and_leakage(tmp_path: Path, main_cli: Any,
                                                               shape_folder: Any) -> None:
    root = _leaky(tmp_path / "d")
    result = main_cli("train", "--data", root, "--model", "mlp", "--epochs", "1", "--batch-size", "8", "--device",
                      "cpu", "--out", tmp_path / "runs")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 1 image(s) appear in more than one split (leakage: validation/test scores "
                        f"overstate accuracy) and 1 group(s) of identical images within a split; `visiontrain data "
                        f"info {root}` lists them"], result.err
    info = json.loads(main_cli("data", "info", root, "--json").out)["duplicates"]
    assert (len(info["across_splits"]), len(info["within_split"])) == (1, 1)  # the same finding
    clean = main_cli("train", "--data", shape_folder(tmp_path / "clean", 10, size=16), "--model", "mlp", "--epochs",
                     "1", "--batch-size", "8", "--device", "cpu", "--out", tmp_path / "runs")
    assert clean.code == 0 and "warning:" not in clean.err, clean.err


def test_the_start_up_check_is_bounded_and_says_what_it_checked(tmp_path: Path) -> None:
    root = _leaky(tmp_path / "d")
    source = load_source(DataConfig(name=str(root)), 0)
    assert start_lines(source, str(root)) == start_lines(source, str(root), max_bytes=10**9)
    lines = start_lines(source, str(root), max_bytes=1)  # not even one file
    assert len(lines) == 1 and lines[0].startswith("note: duplicate and leakage check at start-up found none "
                                                   "(hashed 0 of the "), lines
    assert f"`visiontrain data info {root}` checks them all" in lines[0]
    synthetic = load_source(DataConfig(name="synthetic", args={"train": 64, "val": 16, "test": 16}), 0)
    assert start_lines(synthetic, "synthetic") == []  # in memory: every image hashed, none repeated
