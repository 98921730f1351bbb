"""Sharded datasets: ``visiontrain data pack`` → WebDataset tar shards + index.json → ``--data shards:OUT/``.

Packing a folder and training from the shards equals training from the folder (same classes, counts, splits,
statistics, weights); a run stopped mid-epoch on streamed shards resumes bit-identically; the ranks of a
distributed run read disjoint members that cover the epoch once; a corrupt member is named by shard and member;
the ``webdataset`` library and ``tarfile`` read the shards; the index is written last and never names code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

import visiontrain
from visiontrain.config import DataConfig
from visiontrain.data import build_data
from visiontrain.data.pack import pack
from visiontrain.data.shards import read_index, shard_order
from visiontrain.errors import DataError


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, shape_folder: Any) -> tuple[Path, Path]:
    """A folder of 16-px shape PNGs (train/ and test/) and its pack into ~4 KB shards (many shards)."""
    root = tmp_path_factory.mktemp("shards")
    shape_folder(root / "photos" / "train", 10, size=16)
    shape_folder(root / "photos" / "test", 3, size=16, seed=5)
    pack(DataConfig(name=str(root / "photos")), 0, root / "packed", shard_bytes=8192)
    return root / "photos", root / "packed"


def _config(data: str, out: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {"data": {"name": data, **extra}, "epochs": 2, "batch_size": 8, "lr": 0.01, "plots": False,
            "deterministic": True, "device": "cpu", "out": str(out), "name": name}


def test_the_index_lists_every_shard_member_and_count(packed: tuple[Path, Path]) -> None:
    index = read_index(packed[1])
    train = index["splits"]["train"]
    assert index["classes"] == ["circle", "cross", "square", "triangle"] and index["size"] == 16
    assert train["count"] == 40 and train["per_class"] == dict.fromkeys(index["classes"], 10)
    assert index["splits"]["test"]["count"] == 12 and len(train["shards"]) > 3
    assert sum(s["count"] for s in train["shards"]) == 40
    with tarfile.open(packed[1] / train["shards"][0]["file"]) as tar:  # plain tarfile: image + .cls per sample
        names = tar.getnames()
        first = train["shards"][0]["members"][0]
        data = tar.extractfile(names[0]).read()  # type: ignore[union-attr]
    assert names[:2] == ["train_00000000.png", "train_00000000.cls"]
    with open(packed[1] / train["shards"][0]["file"], "rb") as fh:  # the index's offset is the member's data
        fh.seek(first[2])
        assert fh.read(first[3]) == data == (packed[0] / "train" / "circle" / "000.png").read_bytes()


def test_the_webdataset_library_reads_the_shards(packed: tuple[Path, Path]) -> None:
    import webdataset as wds

    index = read_index(packed[1])
    urls = [str(packed[1] / s["file"]) for s in index["splits"]["train"]["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png", "cls"))
    assert len(samples) == 40 and samples[0][0].shape == (16, 16, 3)
    assert [int(c) for _, c in samples] == [0] * 10 + [1] * 10 + [2] * 10 + [3] * 10


def test_shards_give_the_sources_classes_counts_splits_and_statistics(packed: tuple[Path, Path]) -> None:
    folder, shards = (build_data(DataConfig(name=name), 0) for name in (str(packed[0]), f"shards:{packed[1]}"))
    assert shards.classes == folder.classes and shards.prep == folder.prep
    assert {k: len(v) for k, v in shards.source.splits.items()} == {k: len(v) for k, v in folder.source.splits.items()}
    for name in ("train", "val", "test"):  # val held out of train the same way (stratified, seeded)
        assert torch.equal(shards.source.splits[name].labels, folder.source.splits[name].labels)


def test_training_and_evaluating_on_shards_equals_the_folder(packed: tuple[Path, Path], tmp_path: Path) -> None:
    """Small shards are cached like a small folder: the same pixels in the same order, so the same weights."""
    runs = {name: visiontrain.train({**_config(data, tmp_path, name), "epochs": 1}, quiet=True)
            for name, data in (("folder", str(packed[0])), ("shards", f"shards:{packed[1]}"))}
    a, b = (safetensors.torch.load_file(r.dir / "checkpoints" / "last.safetensors") for r in runs.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    results = [visiontrain.evaluate(runs["folder"].dir, data=data, split="test")
               for data in (str(packed[0]), f"shards:{packed[1]}")]
    assert results[0]["accuracy"] == results[1]["accuracy"] and results[0]["loss"] == results[1]["loss"]


def test_a_stopped_run_streaming_shards_resumes_bit_identical(packed: tuple[Path, Path], tmp_path: Path,
                                                               stop_at: Any) -> None:
    """cache off: the shard order (shards shuffled, window shuffle) is streamed; stopped mid-epoch 1, resumed."""
    config = _config(f"shards:{packed[1]}", tmp_path, "whole", cache="off", args={"shuffle_buffer": 6})
    config["checkpoint_every"] = 2
    whole = visiontrain.train(config, quiet=True)
    stopped = visiontrain.train({**config, "name": "stopped"}, callbacks=[stop_at(3)], quiet=True)
    resumed = visiontrain.train(resume=stopped.dir, quiet=True)
    assert resumed.summary["final"] == whole.summary["final"]
    a, b = (safetensors.torch.load_file(r.dir / "checkpoints" / "last.safetensors") for r in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_epoch_order_reads_shards_in_a_seeded_order_within_a_window() -> None:
    shard_of = np.repeat(np.arange(10), 50)  # 10 shards of 50
    orders = [shard_order(shard_of, 0, epoch, 20) for epoch in (0, 0, 1)]
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])
    assert sorted(orders[0].tolist()) == list(range(500))
    first_shards = shard_of[orders[0][:20].numpy()]  # the first batch comes from one or two shards, not all ten
    assert len(set(first_shards.tolist())) <= 2
    unwindowed = shard_order(shard_of, 0, 0, 1).numpy()  # the same shard order, members in sequence
    moved = np.abs(np.argsort(orders[0].numpy()) - np.argsort(unwindowed))
    assert 0 < moved.max() < 20  # no sample moves a buffer's length


def test_two_ranks_read_disjoint_members_that_cover_the_epoch_once(packed: tuple[Path, Path]) -> None:
    bundle = build_data(DataConfig(name=f"shards:{packed[1]}", cache="off", batch_size=8), 0)
    loader = bundle.loaders["train"]
    seen = []
    for rank in (0, 1):
        loader.shard(rank, 2)  # type: ignore[union-attr]
        loader.set_epoch(1)
        seen.append([int(i) for i in loader._sampler._indices()])  # type: ignore[union-attr]
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(len(loader.dataset)))


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_a_corrupt_member_is_named_by_shard_and_member(packed: tuple[Path, Path], tmp_path: Path,
                                                       policy: str) -> None:
    folder = tmp_path / "packed"
    folder.mkdir()
    for file in packed[1].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    index = read_index(folder)
    shard = index["splits"]["train"]["shards"][1]
    member, _ext, offset, size, _label = shard["members"][0]
    with open(folder / shard["file"], "r+b") as fh:  # damage the pixels, keep the size
        fh.seek(offset + 40)
        fh.write(b"\0" * (size - 40))
    bundle = build_data(DataConfig(name=str(folder), cache="off", bad_images=policy), 0)  # a plain path works too
    name = f"{shard['file']}:train_{member:08d}.png"
    if policy == "error":
        with pytest.raises(DataError, match=name):
            list(bundle.loaders["train"])
        return
    images = sum(len(y) for _, y in bundle.loaders["train"])
    assert images == len(bundle.source.splits["train"]) - 1
    assert len(bundle.bad_images.entries) == 1 and bundle.bad_images.entries[0][0].endswith(name)


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_the_bad_image_policy_applies_once_at_packing(tmp_path: Path, shape_folder: Any, policy: str) -> None:
    shape_folder(tmp_path / "photos", 2, size=16)
    cut = tmp_path / "photos" / "square" / "001.png"
    cut.write_bytes(cut.read_bytes()[:-30])  # cut short in its pixel data: only a full decode finds it
    cfg = DataConfig(name=str(tmp_path / "photos"), bad_images=policy)
    if policy == "error":
        with pytest.raises(DataError, match=r"square/001\.png: truncated image; .* \(found while packing"):
            pack(cfg, 0, tmp_path / "packed")
        assert not (tmp_path / "packed" / "index.json").exists()
        return
    index = pack(cfg, 0, tmp_path / "packed")
    assert index["splits"]["train"]["count"] == 7 and len(index["bad_images"]) == 1
    assert index["bad_images"][0][0] == str(cut) and index["bad_images"][0][1].startswith("truncated image")
    bundle = build_data(DataConfig(name=f"shards:{tmp_path / 'packed'}", val_split=0), 0)
    assert bundle.bad_images.entries == [tuple(index["bad_images"][0])]  # listed in every run's bad_images.txt


def test_a_member_that_is_not_an_image_is_refused_never_read(packed: tuple[Path, Path], tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    for file in packed[1].glob("*.tar"):
        (folder / file.name).write_bytes(file.read_bytes())
    index = read_index(packed[1])
    index["splits"]["train"]["shards"][0]["members"][0][1] = "pth"
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"train_00000000\.pth is refused: shards hold \.jpg/\.png images only"):
        build_data(DataConfig(name=f"shards:{folder}"), 0)


def test_a_changed_shard_or_a_pack_without_index_is_one_line(packed: tuple[Path, Path], tmp_path: Path,
                                                           main_cli: Any, one_line_error: Any) -> None:
    one_line_error(main_cli("data", "info", f"shards:{tmp_path}"), "no index.json", "did not finish")
    folder = tmp_path / "cut"
    folder.mkdir()
    for file in packed[1].iterdir():
        (folder / file.name).write_bytes(file.read_bytes()[:-1024] if file.suffix == ".tar" else file.read_bytes())
    one_line_error(main_cli("data", "info", f"shards:{folder}"), "the index says", "pack the data again")


def test_pack_command_prints_what_it_wrote(tmp_path: Path, shape_folder: Any, main_cli: Any) -> None:
    shape_folder(tmp_path / "photos", 2, size=16)
    result = main_cli("data", "pack", tmp_path / "photos", tmp_path / "out", "--resize-to", "8", "--shard-size", "1MB")
    assert result.code == 0, result.err
    assert "train: 8 images in 1 shards" in result.out and f"--data shards:{tmp_path / 'out'}" in result.out
    index = read_index(tmp_path / "out")
    assert index["size"] is None and index["packed"]["resize_to"] == 8  # resized: the natural size is 8 now, not 16
    again = main_cli("data", "pack", tmp_path / "photos", tmp_path / "out")
    assert again.code == 2 and "already holds a packed dataset" in again.err


@pytest.mark.slow
def test_pack_cli_writes_shards_and_the_index_last(tmp_path: Path, shape_folder: Any) -> None:
    """A pack killed as it renames its index leaves shards but no index: never a complete-looking folder."""
    shape_folder(tmp_path / "photos", 3, size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VISIONTRAIN_FAULT": "before-rename/index.json:1"}
    argv = [sys.executable, "-m", "visiontrain", "data", "pack", "photos", "out", "--shard-size", "8KB"]
    killed = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9 and list((tmp_path / "out").glob("train-*.tar"))
    assert not (tmp_path / "out" / "index.json").exists()
    env.pop("VISIONTRAIN_FAULT")
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "packed 12 images into out" in done.stdout and read_index(tmp_path / "out")["splits"]["train"]["count"] == 12
    assert not list((tmp_path / "out").glob(".*.tmp"))


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "VISIONTRAIN_FAULT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}


def _train_argv(packed: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["-m", "visiontrain", "train", "--data", f"shards:{packed}", "--cache", "off", "--epochs", "2",
            "--batch-size", "8", "--lr", "0.01", "--plots", "off", "--device", "cpu", "--quiet", "--out", str(out),
            "--name", name, "--set", "data.args.shuffle_buffer=6", *extra]


@pytest.mark.slow
def test_a_run_on_shards_killed_mid_epoch_resumes_bit_identical(packed: tuple[Path, Path], tmp_path: Path) -> None:
    """A real SIGKILL inside epoch 1 of a run streaming shards with 2 workers; resumed with 0 workers: the same
    stream (fingerprint verified) and the same weights as the uninterrupted run."""
    base = [sys.executable, *_train_argv(packed[1], tmp_path, "whole", "--deterministic", "--workers", "2",
                                         "--checkpoint-every", "2", "--threads", "1")]
    whole = subprocess.run(base, capture_output=True, text=True, timeout=300, env=_cli_env())
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed_argv = [a if a != "whole" else "killed" for a in base]
    killed = subprocess.run(killed_argv, capture_output=True, text=True, timeout=300,
                            env=_cli_env(VISIONTRAIN_FAULT="step:3"))
    assert killed.returncode == -9
    resumed = subprocess.run([sys.executable, "-m", "visiontrain", "train", "--resume", str(tmp_path / "killed"),
                              "--workers", "0", "--threads", "1"], capture_output=True, text=True, timeout=300,
                             env=_cli_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at epoch 1, batch 2 (step 2); sample stream verified" in resumed.stderr
    a, b = (safetensors.torch.load_file(tmp_path / name / "checkpoints" / "last.safetensors")
            for name in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_on_shards_equal_one_process(packed: tuple[Path, Path], tmp_path: Path) -> None:
    """torchrun: each process reads its own members of every global batch (disjoint, the epoch once: the unit
    test above); together they train the weights one process trains (a model without batch norm, whose
    statistics are per process)."""
    model = ["--model", "lenet5", "--image-size", "32"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *_train_argv(packed[1], tmp_path, "two", *model)], capture_output=True, text=True,
                         timeout=300, env=_cli_env())
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, *_train_argv(packed[1], tmp_path, "one", *model, "--threads", "1")],
                         capture_output=True, text=True, timeout=300, env=_cli_env())
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (safetensors.torch.load_file(tmp_path / n / "checkpoints" / "last.safetensors") for n in ("one", "two"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_bench_shards_reports_a_row_per_loader(tmp_path: Path) -> None:
    """benchmarks/bench_shards.py end to end on 60 photos, one epoch, 0 workers: every loader gives a row."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_shards.py"
    out = subprocess.run([sys.executable, str(script), "--images", "60", "--workers", "0", "--epochs", "1",
                          "--batch", "16", "--work", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env=_cli_env())
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| vt-") or
            line.startswith("| imagefolder")]
    assert [r[0].strip() for r in rows] == ["imagefolder", "vt-folder", "vt-shards", "vt-shards-resized"]
    assert all(float(r[3].replace(",", "")) > 0 and float(r[5].replace(",", "")) > 10 for r in rows)  # img/s, MiB
