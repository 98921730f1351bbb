"""predict over many files: @list files, batching, CSV output, the progress bar, the exit code."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

import visiontrain
from visiontrain.data.synthetic import SHAPES, make_shapes
from visiontrain.errors import DataError
from visiontrain.use.predict import expand_inputs


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[str]]:
    root = tmp_path_factory.mktemp("batch")
    images, labels = make_shapes(10, 32, 3, seed=77)
    paths = []
    for i, image in enumerate(images):
        folder = root / ("a" if i < 5 else "b/deeper")
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return root, paths, [SHAPES[i] for i in labels.tolist()]


def test_list_file_lines_are_paths_folders_or_globs(tmp_path: Path, pictures) -> None:
    root, paths, _ = pictures
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images to check\n{paths[0]}\n\n{root / 'b'}\n  {root / 'a' / '[12].png'}  \n")
    assert expand_inputs([f"@{listing}"]) == [paths[0], *sorted(paths[5:]), paths[1], paths[2]]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="names no images"):
        expand_inputs([f"@{tmp_path / 'empty.txt'}"])
    with pytest.raises(DataError, match="cannot read the list file"):
        expand_inputs([f"@{tmp_path / 'missing.txt'}"])


def test_batch_size_does_not_change_results(pictures, synthetic_run) -> None:
    _, paths, truth = pictures
    one = visiontrain.predict(synthetic_run.dir, paths, top_k=2, batch_size=1)
    many = visiontrain.predict(synthetic_run.dir, paths, top_k=2, batch_size=4)
    assert [r["path"] for r in many] == [str(p) for p in paths]
    for a, b in zip(one, many, strict=True):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert [p["probability"] for p in a["predictions"]] == pytest.approx(
            [p["probability"] for p in b["predictions"]], abs=1e-5)
    assert [r["predictions"][0]["label"] for r in many] == truth


def test_csv_output_with_an_unreadable_file(tmp_path: Path, pictures, synthetic_run, main_cli) -> None:
    root, paths, truth = pictures
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{root}\n{bad}\n")
    out = tmp_path / "predictions.csv"
    r = main_cli("predict", synthetic_run.dir, f"@{listing}", "--csv", out, "--top-k", "2", "--batch-size", "3",
                 "--progress")
    assert r.code == 0, r.err
    assert "11/11" in r.err  # the progress bar counted every file, the unreadable one too
    assert f"skipped {bad}: truncated image" in r.err
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "probability", "label_2", "probability_2", "error"]
    by_path = {row["path"]: row for row in rows}
    assert [by_path[str(p)]["label"] for p in paths] == truth
    for p in paths:
        row = by_path[str(p)]
        assert 0.25 <= float(row["probability"]) <= 1 and float(row["probability_2"]) <= float(row["probability"])
        assert row["error"] == ""
    assert by_path[str(bad)]["label"] == "" and "truncated" in by_path[str(bad)]["error"]


def test_all_unreadable_exits_2(tmp_path: Path, synthetic_run, main_cli) -> None:
    (tmp_path / "x.png").write_text("hello")
    r = main_cli("predict", synthetic_run.dir, tmp_path / "x.png", "--csv", tmp_path / "o.csv")
    assert r.code == 2 and "skipped" in r.err
    assert "img/s" not in r.err  # stderr is not a terminal here: no progress bar unless asked for
    assert (tmp_path / "o.csv").read_text().splitlines()[1].endswith("(it looks like a text file)")
