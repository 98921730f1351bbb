"""Decode a batch of encoded images on a device: JPEGs with ``torchvision.io.decode_jpeg`` (nvJPEG on a GPU, one
call for the whole batch), everything else — and any JPEG the batch decoder refuses — through the guarded
decoder of :mod:`visiontrain.data.images`. Bytes in, uint8 [C, H, W] tensors on the device out.

The safety limits are the same as for every other image: each member's header is probed first
(:func:`~visiontrain.data.images.probe_image`: allowed formats, ``max_pixels``, bombs, HTML saved as .jpg), before
any pixel is decoded. JPEGs that nvJPEG would get wrong go the guarded way: CMYK ones, and those with an EXIF
rotation (``decode_jpeg`` applies EXIF orientation on the CPU only).

>>> import io
>>> from PIL import Image
>>> jpeg, png = io.BytesIO(), io.BytesIO()
>>> Image.new("RGB", (40, 30), (200, 20, 20)).save(jpeg, "JPEG")
>>> Image.new("L", (8, 8), 128).save(png, "PNG")
>>> out = decode_batch([jpeg.getvalue(), png.getvalue(), b"<html>"], channels=3, device="cpu")
>>> [tuple(x.shape) if not isinstance(x, Exception) else type(x).__name__ for x in out]
[(3, 30, 40), (3, 8, 8), 'ImageError']
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Sequence

import torch
from PIL import Image

from visiontrain.data.images import DEFAULT_MAX_PIXELS, image_to_tensor, open_image, probe_image
from visiontrain.data.transforms import adapt_channels
from visiontrain.errors import ImageError

Payload = bytes | bytearray | memoryview | torch.Tensor
_EXIF_ORIENTATION = 0x0112


def decode_batch(payloads: Sequence[Payload], channels: int, device: torch.device | str = "cpu", *,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 names: Sequence[str] | None = None) -> list[torch.Tensor | ImageError]:
    """Each payload decoded to uint8 [channels, H, W] on ``device``, or the :class:`ImageError` saying why not.

    ``names`` label the errors (file paths); a failure never stops the rest of the batch.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    device = torch.device(device)
    raws = [_as_bytes(p) for p in payloads]
    labels = list(names) if names is not None else [f"<bytes {i}>" for i in range(len(raws))]
    out: list[torch.Tensor | ImageError | None] = [None] * len(raws)
    batch: list[int] = []
    gray: set[int] = set()
    for i, raw in enumerate(raws):
        try:
            info = probe_image(raw, max_pixels, name=labels[i])  # header only: the limits hold before decoding
        except ImageError as exc:
            out[i] = exc
            continue
        if info.format == "JPEG" and info.mode in ("L", "RGB") and _upright(raw):
            batch.append(i)
            if info.mode == "L":
                gray.add(i)
        else:
            out[i] = _guarded(raw, channels, max_pixels, labels[i], device)
    for i, image in zip(batch, _jpegs([raws[i] for i in batch], device), strict=True):
        if image is None:
            out[i] = _guarded(raws[i], channels, max_pixels, labels[i], device)
        elif channels == 1:  # colour → gray as Pillow does (ITU-R 601 luma), not libjpeg's Y plane (off by up to ~9)
            out[i] = image[:1].contiguous() if i in gray else adapt_channels(image, 1)
        else:
            out[i] = image
    return out  # type: ignore[return-value]  (every slot is filled above)


@functools.cache
def batch_decoder_works(device: torch.device | str) -> bool:
    """Whether ``decode_jpeg`` decodes on ``device`` (a CUDA build with nvJPEG for a GPU); tried once per device."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return False
    if device.type not in ("cpu", "cuda"):
        return False
    tiny = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiny, "JPEG")
    return _jpegs([tiny.getvalue()], device)[0] is not None


def _jpegs(raws: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """One ``decode_jpeg`` call for the batch; if it fails (it returns nothing partial), one call per member, and
    None for a member it still refuses (the caller decodes that one the guarded way)."""
    if not raws:
        return []
    tensors = [torch.frombuffer(bytearray(raw), dtype=torch.uint8) for raw in raws]
    try:
        return list(_decode_jpeg(tensors, device))
    except RuntimeError:
        pass
    out: list[torch.Tensor | None] = []
    for tensor in tensors:
        try:
            out.append(_decode_jpeg([tensor], device)[0])
        except RuntimeError:
            out.append(None)
    return out


def _decode_jpeg(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Gray JPEGs come out repeated (RGB): one mode for the whole batch call."""
    from torchvision.io import ImageReadMode, decode_jpeg  # torchvision loads torch._dynamo: only when decoding

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points at TorchCodec; it still works
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)


def _guarded(raw: bytes, channels: int, max_pixels: int, name: str, device: torch.device) -> torch.Tensor | ImageError:
    try:
        image = open_image(raw, channels, max_pixels=max_pixels, name=name)
    except ImageError as exc:
        return exc
    return image_to_tensor(image).to(device)


def _upright(raw: bytes) -> bool:
    """No EXIF rotation to apply (the header alone is read; the probe has already vetted the file)."""
    try:
        with Image.open(io.BytesIO(raw), formats=("JPEG",)) as img:
            return img.getexif().get(_EXIF_ORIENTATION, 1) == 1
    except (OSError, SyntaxError, ValueError):
        return False


def _as_bytes(payload: Payload) -> bytes:
    if isinstance(payload, torch.Tensor):
        return payload.detach().cpu().contiguous().numpy().tobytes()
    return bytes(payload)
