"""Every built-in model exports to every format with a dynamic batch (slow tier: about two minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visiontrain.data import Preprocessing
from visiontrain.models import MODELS, ModelInput, create_model
from visiontrain.use.export.write import export
from visiontrain.use.loading import LoadedModel


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name", MODELS.list())
def test_every_model_exports(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name, ModelInput(1, 28, 10)).eval()
    prep = Preprocessing(1, 28, (0.5,), (0.25,), [])
    meta = {"classes": [str(i) for i in range(10)], "model": {"name": name, "args": {}},
            "preprocessing": prep.to_dict()}
    loaded = LoadedModel(model, meta, prep, torch.device("cpu"), tmp_path / "checkpoints" / "best.json")
    for fmt in ("onnx", "torchscript", "pt2"):
        result = export(loaded, fmt)  # raises when the export is off or its batch size is fixed
        assert result.path.is_file() and result.max_abs_diff <= result.tolerance
