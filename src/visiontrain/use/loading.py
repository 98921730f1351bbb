"""``visiontrain.load``: a checkpoint (or a run folder) back into a ready-to-use model.

Only visiontrain's own safetensors + JSON checkpoints are read here: tensors and plain data, never
pickles, so loading a file can never run code from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from visiontrain.checkpoint.format import load_into, load_weights, read_sidecar, resolve_checkpoint
from visiontrain.config.trust import check_file_values
from visiontrain.data import Preprocessing
from visiontrain.data.transforms import build_transforms, eval_transform
from visiontrain.engine.setup import resolve_device
from visiontrain.errors import CheckpointError, TrustError, VisiontrainError
from visiontrain.models import ModelInput
from visiontrain.models.checks import check_head, check_model_budget
from visiontrain.models.rebuild import rebuild_model


class ImageMode:
    """A PIL image in ``mode`` ('L', 'RGB') as Pillow converts it — what ``predict`` reads files as; tensors pass."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Any) -> Any:
        return image.convert(self.mode) if isinstance(image, Image.Image) and image.mode != self.mode else image


class UsableModel:
    """What predict, evaluate and serve need of a model, a checkpoint's or an export's: class names, the
    evaluation transforms and logits for a uint8 batch. Subclasses give ``meta``, ``prep``, ``device``
    and :meth:`net` (normalized float input → logits)."""

    meta: dict[str, Any]
    prep: Preprocessing
    device: torch.device

    def net(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def transform(self):
        """The evaluation transforms, uint8 in and uint8 out (resize, crop): what calling the model expects."""
        return eval_transform(self.prep.eval_transforms)

    def preprocess(self) -> Any:
        """One callable from an image (PIL, or a uint8 tensor [C,H,W]) to the input the plain ``nn.Module``
        takes: the channels the model reads, the evaluation transforms, [0, 1] floats, Normalize with the
        checkpoint's mean/std — so ``loaded.model(loaded.preprocess()(img)[None])`` predicts as ``predict`` does.
        """
        from torchvision.transforms import v2  # heavy (torch._dynamo): predict itself never needs it

        mode = "L" if self.prep.channels == 1 else "RGB"
        channels = [v2.Grayscale()] if self.prep.channels == 1 else [v2.RGB()]
        normalize = v2.Normalize(list(self.prep.mean), list(self.prep.std))
        return v2.Compose([ImageMode(mode), v2.ToImage(), *channels, build_transforms(self.prep.eval_transforms),
                           v2.ToDtype(torch.float32, scale=True), normalize])

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a uint8 batch [B,C,H,W] already at the model's input size."""
        return self.net(self.prep.normalizer()(images.to(self.device)))


@dataclass
class LoadedModel(UsableModel):
    """A checkpoint's model in eval mode with its class names and preprocessing.

    Calling it gives the model's **logits** (raw scores, [B, classes]; ``.softmax(1)`` makes probabilities; a
    regression model's values, [B, 1]) without gradients, on its device, for a batch at the model's input size:
    a **uint8** batch (pixels 0-255, [B,C,H,W] or one [C,H,W] image) is normalized with the checkpoint's own
    mean/std first; a **float** batch is taken as already normalized input, as the network saw it in training.

    >>> import torch, visiontrain
    >>> model = visiontrain.load("runs/demo")
    >>> model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape
    torch.Size([2, 4])

    For plain PyTorch, ``model.model`` is the ``nn.Module`` and ``model.preprocess()`` turns an image into its
    normalized input (resize, crop, Normalize included):

    >>> from PIL import Image
    >>> x = model.preprocess()(Image.open("shape.png"))
    >>> x.dtype, tuple(x.shape)
    (torch.float32, (3, 32, 32))
    >>> model.classes[int(model.model(x[None]).argmax())] == model.classes[int(model(x).argmax())]
    True
    """

    model: nn.Module
    meta: dict[str, Any]
    prep: Preprocessing
    device: torch.device
    path: Path

    def net(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        logits = self.logits(batch) if batch.dtype == torch.uint8 else self.net(batch.to(self.device))
        return logits[0] if single else logits


def load(path: str | Path, device: str = "auto", which: str = "best", *, trust_code: bool = False,
         model_spec: str | None = None) -> LoadedModel:
    """Load a checkpoint for prediction or evaluation.

    The sidecar's model must be one visiontrain builds by name, with plain arguments. A model trained as your own
    class (``--model my_model.py:Tudui``) is recorded by that spec, and a file never decides what code runs: it is
    imported again only when you say it — ``model_spec="my_model.py:Tudui"`` (CLI ``--model``; it may point to
    where the file is now) or ``trust_code=True`` (see :mod:`visiontrain.config.trust`).

    >>> import visiontrain
    >>> m = visiontrain.load("runs/demo")  # a run folder (its best checkpoint), or a checkpoint's .json
    >>> m.classes[:3], m.prep.size
    (['circle', 'square', 'triangle'], 32)

    A ``.safetensors`` checkpoint copied without its ``.json`` loads too: the same fields are in its header, read
    and checked as the sidecar would be (``visiontrain.load("best.safetensors")``).
    """
    sidecar = resolve_checkpoint(path, which)
    meta = read_sidecar(sidecar)  # or, when the .json is missing, the copy in the .safetensors header
    if not sidecar.is_file():
        sidecar = sidecar.with_suffix(".safetensors")  # the file that described itself: named in every message
    try:
        prep = Preprocessing.from_dict(meta["preprocessing"])
        spec = meta["model"]
        name, args = str(spec["name"]), dict(spec.get("args") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{sidecar}: preprocessing/model fields are damaged ({exc})") from None
    classes = meta["classes"]
    if not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{sidecar}: 'classes' must be a non-empty list of names")
    inp = ModelInput(prep.channels, prep.size, len(classes))
    try:
        given = ("model.name",) if model_spec else ()  # the user named the model's code: theirs, not the file's
        built = {**spec, "name": model_spec or name, "args": args}
        check_file_values({"model": built}, sidecar, trust_code=trust_code, given=given)  # before anything is built
        check_model_budget(built, inp, meta, sidecar)  # on the meta device, before building for real
        model = rebuild_model(built, inp, where=sidecar, trust_code=trust_code, given=given)
    except (CheckpointError, TrustError):
        raise  # these already name the file and the field
    except VisiontrainError as exc:
        raise CheckpointError(f"{sidecar}: cannot rebuild its model: {exc}") from None
    tensors = load_weights(sidecar, meta)
    check_head(model, tensors, classes, sidecar)
    load_into(model, tensors, sidecar)
    dev = resolve_device(device)
    # The memory format training used (runner.train): convolutions pick their kernels by it, and a
    # contiguous copy gives logits that differ in the last bits from the model that was trained and tested.
    saved = meta.get("config")
    saved_train = saved.get("train") if isinstance(saved, dict) else None
    wanted = saved_train.get("channels_last", True) if isinstance(saved_train, dict) else True
    channels_last = bool(wanted) and dev.type != "mps"
    model.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format).eval()
    return LoadedModel(model, meta, prep, dev, sidecar)
