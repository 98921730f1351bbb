"""``--compile``, alone and under torchrun: the model is compiled before DDP wraps it, and its checkpoints must
hold the plain module's names (not ``module._orig_mod.…``) so that ``best`` loads strictly — in the run's final
test pass and in ``visiontrain predict``.

The default tier wraps a model the way a torchrun job does (a real gloo process group of one process, DDP
around ``torch.compile(backend="eager")``) and goes save → load → predict in this process. The slow tier runs
``visiontrain train --compile`` for real (inductor: a minute or two of compiling per process on a small CPU),
as one process and as two under torchrun, each through ``visiontrain predict``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.distributed as dist
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

import visiontrain
from visiontrain.checkpoint.format import raw_model, save_checkpoint
from visiontrain.config import ModelConfig
from visiontrain.data import Preprocessing
from visiontrain.data.synthetic import SHAPES, make_shapes
from visiontrain.models import ModelInput, create_model
from visiontrain.models.assembly import model_spec

WRAPPERS = ("module.", "_orig_mod.")


def _plain(keys: object) -> bool:
    """No name carries a DDP (``module.``) or torch.compile (``_orig_mod.``) prefix."""
    return not any(key.startswith(WRAPPERS) or "._orig_mod." in key for key in keys)


def _images(folder: Path, count: int, size: int) -> tuple[list[Path], torch.Tensor]:
    images, _ = make_shapes(count, size, 3, seed=5)
    folder.mkdir()
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths, images


def test_a_compiled_model_inside_ddp_saves_plain_names_that_load_and_predict_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    inp, prep = ModelInput(3, 16, len(SHAPES)), Preprocessing(3, 16, (0.5,) * 3, (0.25,) * 3)
    model = create_model("small_cnn", inp)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(torch.compile(model, backend="eager"))  # as engine/distributed.wrap
        optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
        x = prep.normalizer()(make_shapes(8, 16, 3, seed=1)[0])
        wrapped(x).logsumexp(dim=1).mean().backward()  # one real step through both wrappers
        optimizer.step()
        assert not _plain(wrapped.state_dict())  # the wrapped names: module._orig_mod.…
        assert raw_model(wrapped) is model
        meta = {"task": "classification", "model": model_spec(ModelConfig("small_cnn"), 3), "classes": list(SHAPES),
                "preprocessing": prep.to_dict()}
        save_checkpoint(tmp_path / "best", wrapped, meta)
    finally:
        dist.destroy_process_group()
    saved = safetensors.torch.load_file(tmp_path / "best.safetensors")
    assert _plain(saved) and set(saved) == set(model.state_dict())

    loaded = visiontrain.load(tmp_path / "best.json", device="cpu")  # strict: every name and shape must fit
    paths, images = _images(tmp_path / "images", 6, 16)
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(prep.normalizer()(images)), dim=1)
    torch.testing.assert_close(torch.softmax(loaded.logits(images), dim=1), expected, rtol=1e-5, atol=1e-6)
    results = visiontrain.predict(loaded, paths, top_k=1)
    assert [r["predictions"][0]["index"] for r in results] == expected.argmax(dim=1).tolist()


ARGS = ["--data", "synthetic", "--data-arg", "train=128", "--data-arg", "val=32", "--data-arg", "test=32",
        "--data-arg", "size=16", "--model", "small_cnn", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
        "--compile", "--plots", "off", "--quiet"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "VISIONTRAIN_FAULT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_train_with_compile_round_trips_through_predict(processes: int, tmp_path: Path) -> None:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    train = subprocess.run([*launcher, "-m", "visiontrain", "train", *ARGS, "--out", str(tmp_path), "--name", "c"],
                           capture_output=True, text=True, timeout=1200, env=_env(), cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    run = tmp_path / "c"
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["test"]["checkpoint"] == "best"  # the final test pass loaded best strictly
    for which in ("best", "last"):
        assert _plain(safetensors.torch.load_file(run / "checkpoints" / f"{which}.safetensors"))
    samples = sorted((run / "samples").iterdir())
    predict = subprocess.run([sys.executable, "-m", "visiontrain", "predict", str(run), *map(str, samples), "--json",
                              "--device", "cpu"], capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr[-3000:]
    results = json.loads(predict.stdout)
    assert [Path(r["path"]).name for r in results] == [p.name for p in samples]
    loaded = visiontrain.load(run, device="cpu")
    for result, path in zip(results, samples, strict=True):
        image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        probs = torch.softmax(loaded.logits(image[None]), dim=1)[0]
        assert result["predictions"][0]["index"] == int(probs.argmax())
        assert result["predictions"][0]["probability"] == pytest.approx(float(probs.max()), rel=1e-4)
