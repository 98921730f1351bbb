"""Start-up: `visiontrain --help`, every command's --help and `import visiontrain` load no torch, torchvision or
other heavy library (they took ~5 s each when everything was imported up front). The import graph is checked, not
the time: a timed test is flaky on a shared machine; benchmarks/bench_startup.py measures the seconds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Each of these costs from tens of milliseconds (PIL, numpy) to seconds (torch, torchvision) to import.
HEAVY = ("torch", "torchvision", "numpy", "PIL", "matplotlib", "tensorboard", "torchmetrics", "safetensors", "tqdm",
         "fastapi", "uvicorn", "onnx", "onnxruntime", "timm", "visiontrain.data", "visiontrain.models",
         "visiontrain.engine", "visiontrain.trainer")
HELPS = {
    "visiontrain --help": ["--help"],
    "visiontrain": [],
    **{f"{name} --help": [*name.split(), "--help"] for name in (
        "train", "evaluate", "predict", "export", "serve", "lr-find", "tensorboard", "datasets", "models",
        "models show", "recipes", "runs", "data info", "data show", "data stats", "data list", "checkpoint inspect",
        "checkpoint convert")},
}

# One process for all: after each step, which heavy modules are loaded (the CLI's parser is built fresh each time).
_PROBE = """
import contextlib, io, json, sys
def heavy():
    return sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
seen = {}
import visiontrain
seen["import visiontrain"] = heavy()
from visiontrain.cli import main
for name, argv in HELPS.items():
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
    seen[name] = heavy()
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str]]:
    code = f"HEAVY = {HEAVY!r}\nHELPS = {HELPS!r}\n{_PROBE}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("command", ["import visiontrain", *HELPS])
def test_help_and_import_load_no_heavy_module(loaded: dict[str, list[str]], command: str) -> None:
    assert loaded[command] == [], f"{command} imports {', '.join(loaded[command][:8])}"


def test_the_real_command_imports_nothing_heavy() -> None:
    """`python -m visiontrain --help` as its own process, seen by the interpreter's own import log."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "visiontrain", "--help"], capture_output=True,
                          text=True, timeout=120, check=True)
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "visiontrain.cli" in modules and "usage: visiontrain" in proc.stdout
    assert not {m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY}


# What `predict` has no use for: torchvision (its evaluation resize/crop runs on torch alone, data.transforms.
# TensorEval) and torch._dynamo (which torchvision and torch's meta-device decompositions import: ~2 CPU-s, more
# than predict costs without them), the training loop and its loggers, the report's and the trackers' libraries,
# the serve and export extras, and the export writers (quantization, the evaluation they verify with). It needs
# torch, the checkpoint and the model; anything more is start-up time every prediction pays.
NOT_FOR_PREDICT = ("torchvision", "torch._dynamo", "matplotlib", "tensorboard", "torchmetrics", "onnx", "onnxruntime",
                   "timm", "fastapi", "uvicorn",
                   "mlflow", "optuna", "pytorch_grad_cam", "visiontrain.trainer", "visiontrain.watch",
                   "visiontrain.use.export.write", "visiontrain.use.export.quantize", "visiontrain.use.evaluate",
                   "visiontrain.use.report", "visiontrain.use.serve")


@pytest.mark.slow
def test_predict_loads_only_what_it_uses(synthetic_run) -> None:
    """`visiontrain predict RUN one.png` as its own process, seen by the interpreter's own import log."""
    image = sorted((synthetic_run.dir / "samples").iterdir())[0]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "visiontrain", "predict", str(synthetic_run.dir),
                           str(image)], capture_output=True, text=True, timeout=300, check=True)
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "visiontrain.use.predict" in modules and "%" in proc.stdout  # it ran and printed a prediction
    loaded = sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_FOR_PREDICT))
    assert not loaded, f"predict imports {', '.join(loaded)}"
