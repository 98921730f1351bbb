"""A user's own Dataset class by import path: the seeds' ``Mydata`` and friends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from visiontrain.config import DataConfig
from visiontrain.data import build_data
from visiontrain.data.sources import ItemSplit, load_source
from visiontrain.errors import DataError

MODULE = '''
import os
import torch
from PIL import Image
from torch.utils.data import Dataset


class Mydata(Dataset):  # seed 004, as written there (plus sorting, for a stable order)
    def __init__(self, root_dir, label_dir):
        self.root_dir = root_dir
        self.label_dir = label_dir
        self.path = os.path.join(self.root_dir, self.label_dir)
        self.img_path_list = sorted(os.listdir(self.path))

    def __getitem__(self, index):
        img_name = self.img_path_list[index]
        img = Image.open(os.path.join(self.root_dir, self.label_dir, img_name))
        return img, self.label_dir

    def __len__(self):
        return len(self.img_path_list)


class AntsBees(Dataset):
    """Both class folders, labels as names; images of different sizes."""
    def __init__(self, root_dir):
        self.items = [(os.path.join(root_dir, d, f), d) for d in ("ants", "bees")
                      for f in sorted(os.listdir(os.path.join(root_dir, d)))]

    def __getitem__(self, i):
        return Image.open(self.items[i][0]), self.items[i][1]

    def __len__(self):
        return len(self.items)


class Tensors(Dataset):
    """torchvision-style: a train flag, float tensors in [0, 1] (ToTensor), int targets, class names."""
    classes = ["dark", "light"]

    def __init__(self, train=True, n=12):
        g = torch.Generator().manual_seed(0 if train else 1)
        self.targets = [i % 2 for i in range(n if train else n // 2)]
        self.x = [torch.full((1, 10, 10), 0.9 if t else 0.1) + 0.05 * torch.rand(1, 10, 10, generator=g)
                  for t in self.targets]

    def __getitem__(self, i):
        return self.x[i].clamp(0, 1), self.targets[i]

    def __len__(self):
        return len(self.targets)


class Values(Dataset):
    """Regression: arrays H x W x C and float targets."""
    def __getitem__(self, i):
        import numpy as np
        return np.full((8, 8, 3), i * 10, dtype=np.uint8), i * 0.5 + 0.25

    def __len__(self):
        return 10


class Flaky(Dataset):
    targets = [0, 1, 0, 1, 0, 1]

    def __getitem__(self, i):
        if i == 3:
            raise OSError("disk hiccup")
        return torch.zeros(3, 8, 8, dtype=torch.uint8), self.targets[i]

    def __len__(self):
        return 6


class Broken(Dataset):
    def __init__(self, root):
        raise FileNotFoundError(root)
'''


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "my_data.py"
    path.write_text(MODULE)
    for cls, size in (("ants", 20), ("bees", 30)):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (size + i, size), (200 if cls == "bees" else 20, 80, 40)).save(
                tmp_path / "train" / cls / f"{i}.jpg")
    monkeypatch.chdir(tmp_path)
    return path


def test_the_seeds_mydata_by_file_path(module: Path) -> None:
    cfg = DataConfig(name="my_data.py:Mydata", args={"root_dir": "train", "label_dir": "ants"}, val_split=0.0)
    source = load_source(cfg, 0)
    assert source.classes == ["ants"] and len(source.splits["train"]) == 4  # the label is the folder name
    assert isinstance(source.splits["train"], ItemSplit)


def test_names_as_labels_by_module_path_from_the_current_folder(module: Path) -> None:
    bundle = build_data(DataConfig(name="my_data:AntsBees", args={"root_dir": "train"}, val_split=0.25,
                                   batch_size=8), 0, size=16)
    assert bundle.classes == ["ants", "bees"]
    assert {k: len(v) for k, v in bundle.source.splits.items()} == {"train": 6, "val": 2}
    images, labels = next(iter(bundle.loaders["train"]))
    assert images.shape == (6, 3, 16, 16) and images.dtype == torch.uint8 and set(labels.tolist()) == {0, 1}


def test_train_flag_float_tensors_and_class_names(module: Path) -> None:
    bundle = build_data(DataConfig(name="my_data.py:Tensors", args={"n": 12}, val_split=0.0, batch_size=12), 0)
    source = bundle.source
    assert source.classes == ["dark", "light"] and set(source.splits) == {"train", "test"}
    assert (source.channels, source.size) == (1, 10)
    images, labels = next(iter(bundle.loaders["test"]))
    assert images.shape == (6, 1, 10, 10)
    dark = images[labels == 0].float().mean()
    assert 20 < dark < 45  # 0.1..0.15 of 255: floats in [0, 1] were scaled, not truncated


def test_regression_items(module: Path) -> None:
    source = load_source(DataConfig(name="my_data.py:Values", val_split=0.0), 0)
    assert source.task == "regression" and source.classes == ["value"]
    assert source.splits["train"].labels.dtype == torch.float32


def test_a_failing_item_follows_the_bad_images_policy(module: Path) -> None:
    cfg = DataConfig(name="my_data.py:Flaky", val_split=0.0, cache="off")
    bundle = build_data(cfg, 0, size=8)
    with pytest.raises(DataError, match=r"my_data.py:Flaky\[3\]: your Dataset raised OSError: disk hiccup"):
        list(bundle.loaders["train"])
    skip = build_data(DataConfig(name="my_data.py:Flaky", val_split=0.0, bad_images="skip"), 0, size=8)
    assert len(skip.loaders["train"].images) == 5  # type: ignore[union-attr, arg-type]
    assert "Flaky[3]\tyour Dataset raised OSError" in skip.artifacts()["bad_images.txt"]


@pytest.mark.parametrize(("name", "args", "message"), [
    ("no_such_module:X", {}, "cannot import no_such_module: ModuleNotFoundError"),
    ("my_data.py:Nope", {}, "module my_data.py has no 'Nope'"),
    ("missing.py:X", {}, "does not exist"),
    ("my_data.py:Broken", {"root": "/x"}, r"Broken\(root='/x'\) failed: FileNotFoundError"),
    ("my_data.py:Mydata", {}, "pass its arguments with --data-arg"),
])
def test_import_and_construction_errors_are_one_line(module: Path, name: str, args: dict, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        load_source(DataConfig(name=name, args=args), 0)
    assert "\n" not in str(info.value)
