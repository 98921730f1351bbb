"""``visiontrain.predict``: class probabilities for image files, folders and globs.

Every file goes through the safe decoder (RGBA, palette, 16-bit, grayscale … become what the model
expects), then the checkpoint's own evaluation transforms. A file that cannot be read is reported in its
result and skipped; the others are still predicted.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from visiontrain.data.images import image_to_tensor, is_image_file, open_image
from visiontrain.errors import DataError, ImageError
from visiontrain.use.loading import LoadedModel, load


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders recursively (image files only); glob patterns expanded; order kept."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
        elif not p.exists() and glob.has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            if not matches:
                raise DataError(f"no file matches {item!r}")
            out += [m for m in matches if m.is_file()]
        else:
            out.append(p)  # a missing file is reported per file, like an unreadable one
    if not out:
        raise DataError("no images to predict: the folders given hold no .jpg/.png/.bmp/.webp/.gif/.tif files")
    return out


def predict(model: LoadedModel | str | Path, inputs: Iterable[str | Path] | str | Path, top_k: int = 5,
            batch_size: int = 64, device: str = "auto") -> list[dict[str, Any]]:
    """Predict the top-k classes of each image.

    Returns ``[{"path", "predictions": [{"label", "index", "probability"}]}]``, or ``{"path", "error"}``
    for a file that could not be read.

    >>> visiontrain.predict("runs/mnist-demo", ["digit.png"], top_k=3)  # doctest: +SKIP
    [{'path': 'digit.png', 'predictions': [{'label': '7', 'index': 7, 'probability': 0.998}, ...]}]
    """
    loaded = model if isinstance(model, LoadedModel) else load(model, device=device)
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    paths = expand_inputs(inputs)
    k = max(1, min(top_k, len(loaded.classes)))
    transform = loaded.transform()
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        tensors, slots = [], []
        for path in chunk:
            result: dict[str, Any] = {"path": str(path)}
            results.append(result)
            try:
                image = image_to_tensor(open_image(path, loaded.prep.channels))
            except ImageError as exc:
                result["error"] = exc.reason
                continue
            tensors.append(_fit_size(transform(image), loaded.prep.size))
            slots.append(result)
        if tensors:
            probs = torch.softmax(loaded.logits(torch.stack(tensors)).float(), dim=1).cpu()
            top = probs.topk(k, dim=1)
            for result, values, indices in zip(slots, top.values, top.indices, strict=True):
                result["predictions"] = [
                    {"label": loaded.classes[i], "index": int(i), "probability": round(float(v), 6)}
                    for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
    return results


def _fit_size(image: torch.Tensor, size: int) -> torch.Tensor:
    # The saved transforms end at the model's size; this guards hand-edited or older transform lists.
    if tuple(image.shape[-2:]) != (size, size):
        from torchvision.transforms.v2 import functional as F

        image = F.resize(image, [size, size], antialias=True)
    return image
