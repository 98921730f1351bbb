"""visiontrain: train, evaluate and use image classifiers — the complete PyTorch routine as one API.

>>> import visiontrain
>>> run = visiontrain.train({"data": "synthetic", "data_args": {"train": 200, "val": 40, "test": 40}, "epochs": 1,
...                          "plots": False})
>>> run.summary["epochs_completed"], run.summary["data"]["classes"]
(1, ['circle', 'square', 'triangle', 'cross'])
>>> visiontrain.predict(run.dir, ["shape.png"], top_k=1)
[{'path': 'shape.png', 'predictions': [{'label': '...', 'index': ..., 'probability': ...}]}]
"""

from __future__ import annotations

# First, and for its side effect: refuses a torch < 2.10, whose weights-only loader is unsafe (versions.py).
from visiontrain import versions as _versions  # noqa: F401
from visiontrain.config import RunConfig
from visiontrain.data import DATASETS
from visiontrain.errors import VisiontrainError
from visiontrain.models import MODELS
from visiontrain.trainer import Run, find_lr, train
from visiontrain.use.evaluate import evaluate
from visiontrain.use.export.write import export
from visiontrain.use.loading import LoadedModel, load
from visiontrain.use.predict import predict

__version__ = "0.1.0"


def list_models(pattern: str = "*") -> list[str]:
    """Names of the built-in models matching a glob (torchvision classifiers are accepted too)."""
    return MODELS.list(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the registered datasets matching a glob (any folder-per-class path works too)."""
    return DATASETS.list(pattern)


__all__ = ["LoadedModel", "Run", "RunConfig", "VisiontrainError", "evaluate", "export", "find_lr", "list_datasets",
           "list_models", "load", "predict", "train"]
