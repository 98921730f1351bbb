"""The package's docstring examples, run by the default ``pytest`` (``--doctest-modules`` over ``src/``).

- Every example runs in a fresh empty folder (its working directory), so what it writes lands nowhere else.
- An example that names ``runs/demo`` or ``shape.png`` finds them there: a small synthetic run (small_cnn, 800
  training images, 2 epochs: it tells the shapes apart) trained once per session and copied in, and one real
  PNG of a circle — so ``visiontrain.load("runs/demo")`` in a docstring is what a user types, run for real.
- A module whose top-level imports need an extra that is not installed is not collected (the test extra
  installs them all, so the README's test command runs every example); tests/ skips the same way.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import visiontrain
from visiontrain.data.synthetic import SHAPES, make_shapes

# As in tests/conftest.py: one thread is fast and steady on the few shared cores of the test machine.
torch.set_num_threads(1)

# extra → the modules it must import at module level; their doctests need the extra
_EXTRA_MODULES = {("fastapi", "uvicorn"): ["visiontrain/use/serve/*.py"]}

collect_ignore_glob = [pattern for needs, patterns in _EXTRA_MODULES.items()
                       if not all(importlib.util.find_spec(name) for name in needs) for pattern in patterns]

_DEMO_NAMES = ("runs/demo", "shape.png")


@pytest.fixture(scope="session")
def _demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``runs/demo`` (a trained run) and ``shape.png`` (a circle) in a folder of their own."""
    root = tmp_path_factory.mktemp("doctest-demo")
    config = {"data": "synthetic", "data_args": {"train": 800, "val": 100, "test": 100}, "epochs": 2,
              "batch_size": 32, "plots": False, "out": str(root / "runs"), "name": "demo"}
    visiontrain.train(config, quiet=True)
    images, labels = make_shapes(len(SHAPES), 32, 3, seed=1)
    circle = images[labels.tolist().index(SHAPES.index("circle"))]
    Image.fromarray(circle.permute(1, 2, 0).numpy()).save(root / "shape.png")
    return root


@pytest.fixture(autouse=True)
def _example_folder(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    test = getattr(request.node, "dtest", None)
    source = "".join(example.source for example in test.examples) if test is not None else ""
    if any(name in source for name in _DEMO_NAMES):
        shutil.copytree(request.getfixturevalue("_demo_folder"), tmp_path, dirs_exist_ok=True)
