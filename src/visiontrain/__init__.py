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

import importlib
from typing import TYPE_CHECKING, Any

# First, and for its side effect: refuses a torch < 2.10, whose weights-only loader is unsafe (versions.py).
# It reads the installed version without importing torch, so `import visiontrain` stays quick.
from visiontrain import versions as _versions  # noqa: F401
from visiontrain.errors import VisiontrainError

if TYPE_CHECKING:
    from visiontrain.config import RunConfig
    from visiontrain.trainer import Run, TuneResult, find_lr, train, tune
    from visiontrain.use.evaluate import evaluate
    from visiontrain.use.export.write import export
    from visiontrain.use.loading import LoadedModel, load
    from visiontrain.use.predict import predict

__version__ = "0.1.0"


def list_models(pattern: str = "*") -> list[str]:
    """Names of the built-in models matching a glob (torchvision classifiers are accepted too)."""
    from visiontrain.models import MODELS

    return MODELS.list(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the registered datasets matching a glob (any folder-per-class path works too)."""
    from visiontrain.data import DATASETS

    return DATASETS.list(pattern)


def __getattr__(name: str) -> Any:
    """The API loads on first use (PEP 562): `import visiontrain` and every `visiontrain` command start without
    torchvision, the data sources and the model zoo, which only the commands that use them import."""
    if name in ("Run", "TuneResult", "find_lr", "train", "tune"):
        from visiontrain import trainer as module
    elif name in ("LoadedModel", "load"):
        from visiontrain.use import loading as module
    elif name == "predict":
        from visiontrain.use import predict as module
    elif name == "evaluate":
        from visiontrain.use import evaluate as module
    elif name == "export":
        from visiontrain.use.export import write as module
    elif name == "RunConfig":
        from visiontrain import config as module
    elif name in _SUBPACKAGES:  # `import visiontrain; visiontrain.data.build_data(...)` as before
        return importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES})


_SUBPACKAGES = ("checkpoint", "config", "data", "engine", "errors", "fileio", "limits", "models", "optional",
                "registry", "text", "trainer", "use", "watch")

__all__ = ["LoadedModel", "Run", "RunConfig", "TuneResult", "VisiontrainError", "evaluate", "export", "find_lr",
           "list_datasets", "list_models", "load", "predict", "train", "tune"]
