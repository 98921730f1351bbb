"""``visiontrain.predict``: class probabilities for image files, folders, globs and list files.

Every file goes through the safe decoder (RGBA, palette, 16-bit, grayscale … become what the model
expects), then the model's own evaluation transforms. A file that cannot be read is reported in its
result and skipped; the others are still predicted. The model is a checkpoint (run folder) or an export
(``.onnx`` through onnxruntime, ``.torchscript.pt``, ``.pt2``): the outputs are the same.
"""

from __future__ import annotations

import csv
import glob
import io
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from visiontrain.data.images import image_to_tensor, is_image_file, open_image
from visiontrain.errors import CheckpointError, ConfigError, DataError, ImageError
from visiontrain.fileio import atomic_write_text
from visiontrain.models.checks import check_batch_memory
from visiontrain.use.explain import explain_batch
from visiontrain.use.export.runtime import ExportedModel, load_model
from visiontrain.use.loading import LoadedModel
from visiontrain.use.tta import check_multilabel_views, check_tta, tta_logits

Model = LoadedModel | ExportedModel


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders recursively (image files only); glob patterns expanded; ``@list.txt`` read
    (one path, folder or glob per line; blank lines and ``#`` comments skipped); order kept."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if isinstance(item, str) and item.startswith("@") and not p.exists():
            out += expand_inputs(_read_list(Path(item[1:])))
        elif p.is_dir():
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


def _read_list(path: Path) -> list[str]:
    # Relative entries are relative to the working directory, as if typed on the command line (like tar -T).
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the list file {path} ({exc}); give one image path per line") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise DataError(f"the list file {path} names no images; give one image path per line")
    return entries


def predict(model: Model | str | Path, inputs: Iterable[str | Path] | str | Path, top_k: int = 5,
            batch_size: int = 64, device: str = "auto", *, tta: str = "none",
            progress: bool = False, trust_code: bool = False, model_spec: str | None = None,
            explain: str | Path | None = None, layer: str | None = None,
            explain_method: str = "gradcam") -> list[dict[str, Any]]:
    """Predict the top-k classes of each image.

    Returns ``[{"path", "predictions": [{"label", "index", "probability"}]}]``, or ``{"path", "error"}``
    for a file that could not be read. ``model`` is a run folder, a checkpoint or an export file; ``model_spec``
    restates a checkpoint's own model class (``my_model.py:Tudui``, see :func:`visiontrain.load`).
    ``explain`` (a folder) writes an overlay of each image for its top class there and names it in the result's
    ``"explanation"``: Grad-CAM (a checkpoint; ``layer`` picks the layer) or, with ``explain_method="occlusion"``,
    the gradient-free occlusion map (exports too; see :mod:`visiontrain.use.explain`).

    >>> import visiontrain
    >>> visiontrain.predict("runs/demo", ["shape.png"], top_k=3)
    [{'path': 'shape.png', 'predictions': [{'label': 'circle', 'index': 0, 'probability': ...}, ...]}]
    >>> exported = visiontrain.export("runs/demo", "torchscript").path  # or "onnx", with the onnx extra
    >>> visiontrain.predict(exported, ["shape.png", "missing.png"], top_k=1, tta="flip")
    [{'path': 'shape.png', 'predictions': [{'label': 'circle', ...}]}, {'path': 'missing.png', 'error': ...}]
    """
    check_tta(tta)
    if top_k < 1 or batch_size < 1:
        raise ConfigError(f"top_k (--top-k) and batch_size (--batch-size) must be at least 1, got {top_k} and "
                          f"{batch_size}")
    loaded = model if isinstance(model, LoadedModel | ExportedModel) else \
        load_model(model, device=device, trust_code=trust_code, model_spec=model_spec)
    if explain is not None and not isinstance(loaded, LoadedModel) and explain_method == "gradcam":
        raise ConfigError("--explain needs the PyTorch model (Grad-CAM follows its gradients): give the run folder "
                          "or checkpoint, not an export — or use --explain-method occlusion (forward passes only)")
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    paths = expand_inputs(inputs)
    names = _unique_names(paths) if explain is not None else []
    check_batch_memory(loaded.meta, loaded.prep, min(batch_size, len(paths)), loaded.device, loaded.path)
    transform = loaded.transform()
    results: list[dict[str, Any]] = []
    bar = _progress(len(paths)) if progress else None
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        tensors, slots, slot_names = [], [], []
        for i, path in enumerate(chunk, start):
            result: dict[str, Any] = {"path": str(path)}
            results.append(result)
            try:
                image = image_to_tensor(open_image(path, loaded.prep.channels))
            except ImageError as exc:
                result["error"] = exc.reason
                continue
            tensors.append(fit_size(transform(image), loaded.prep.size))
            slots.append(result)
            slot_names.append(names[i] if names else "")
        if tensors:
            batch = torch.stack(tensors)
            tops = classify(loaded, batch, top_k, tta)
            for result, top in zip(slots, tops, strict=True):
                result["predictions"] = top
            if explain is not None:
                files = explain_batch(loaded, batch, tops, slot_names, explain, layer, explain_method)
                for result, file in zip(slots, files, strict=True):
                    result["explanation"] = str(file)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return results


@torch.no_grad()
def classify(model: Model, images: torch.Tensor, top_k: int = 5, tta: str = "none") -> list[list[dict[str, Any]]]:
    """Top-k ``{"label", "index", "probability"}`` per image of a uint8 batch at the model's input size."""
    k = max(1, min(top_k, len(model.classes)))
    forward = model.net
    x = model.prep.normalizer()(images.to(model.device))
    if (getattr(model, "meta", None) or {}).get("task") == "regression":  # one output: the predicted value
        values = tta_logits(forward, x, tta).float().reshape(len(x)).cpu()
        return [[{"label": "value", "index": 0, "value": round(float(v), 6)}] for v in values]
    if (getattr(model, "meta", None) or {}).get("task") == "multilabel":
        check_multilabel_views(tta, x.dim() == 5)
        return _labels_over(model, torch.sigmoid(forward(x).float()).cpu())
    probs = torch.softmax(tta_logits(forward, x, tta).float(), dim=1).cpu()
    top = probs.topk(k, dim=1)
    return [[{"label": model.classes[i], "index": int(i), "probability": round(float(v), 6)}
             for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
            for values, indices in zip(top.values, top.indices, strict=True)]


def _labels_over(model: Model, scores: torch.Tensor) -> list[list[dict[str, Any]]]:
    """Multi-label: every label whose score reaches its threshold (saved in the checkpoint; else 0.5), most
    probable first, each with the threshold it passed."""
    cut = (model.meta or {}).get("thresholds") or [0.5] * len(model.classes)
    if not (isinstance(cut, list) and len(cut) == len(model.classes)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in cut)):
        raise CheckpointError(f"{model.path}: its 'thresholds' metadata must be one number per class "
                              f"({len(model.classes)}); export the run again")
    return [[{"label": model.classes[i], "index": i, "probability": round(float(row[i]), 6),
              "threshold": float(cut[i])} for i in row.argsort(descending=True).tolist() if float(row[i]) >= cut[i]]
            for row in scores]


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """A file name per input for its overlay: the stem, numbered when two inputs share one (a/x.png, b/x.png)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        seen[p.stem] = seen.get(p.stem, 0) + 1
        out.append(p.stem if seen[p.stem] == 1 else f"{p.stem}-{seen[p.stem]}")
    return out


def fit_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """The image at the model's side (the saved transforms end there; this guards hand-edited lists)."""
    if tuple(image.shape[-2:]) != (size, size):
        from torchvision.transforms.v2 import functional as F

        image = F.resize(image, [size, size], antialias=True)
    return image


def results_csv(results: Sequence[dict[str, Any]]) -> str:
    """CSV text: path, label, probability, then label_2, probability_2 … for the top-k, and error."""
    k = max((len(r.get("predictions", [])) for r in results), default=1)
    header = ["path", "label", "probability"]
    header += [f"{name}_{rank}" for rank in range(2, k + 1) for name in ("label", "probability")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*header, "error"])
    for r in results:
        cells = [r["path"]]
        for p in r.get("predictions", []):
            cells += [p["label"], f"{p['probability']:.6f}"]
        cells += [""] * (len(header) - len(cells))
        writer.writerow([*cells, r.get("error", "")])
    return buf.getvalue()


def write_csv(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write :func:`results_csv` atomically (a crash never leaves half a file)."""
    return atomic_write_text(path, results_csv(results))


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="predict", unit="img", file=sys.stderr, dynamic_ncols=True, leave=True)
