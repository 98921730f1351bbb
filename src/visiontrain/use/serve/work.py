"""Decoding and inference for the service: bounded work per request, run in parallel, excess load refused.

Each upload's header is read first (cheap, nothing decoded). What the decode would cost is known from it:
width x height, or for a JPEG the size at the 1/2-1/8 scale its decoder can produce directly (``draft``),
since the model needs only a few times its own input side (:data:`REDUCE_TO`). An image over the pixel budget
is refused (413) before decoding. The others run in one of two lanes of worker threads: images up to
:data:`LARGE_PIXELS` in the main lane (``threads`` at once; the header is read there too, and a small image is
then predicted in the same thread), larger ones move on to their own lane (a quarter as many), so a flood of
large images cannot make small ones wait behind it. A lane whose workers are busy lets a bounded
number of requests wait; past that it answers 503 with ``Retry-After`` at once, instead of queueing requests
until they time out (504).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.exceptions import HTTPException

from visiontrain.data.images import image_to_tensor, open_image, probe_image
from visiontrain.errors import ImageError
from visiontrain.use.explain import gradcam, overlay_png
from visiontrain.use.predict import classify, fit_size

LARGE_PIXELS = 2**22  # decoded pixels (2048 x 2048) above which an image takes the large-image lane
REDUCE_TO = 4  # decode/keep at most about this many times the model's input side
JPEG_SCALE = 8  # the most a JPEG decoder reduces each side: such a JPEG may declare 8 x 8 times the budget


class Lane:
    """At most ``slots`` jobs run at once in threads and ``queue`` more wait; past that, 503 right away.

    A slot is freed when its thread ends, not when its request gives up (a timed-out job keeps running in its
    thread until it finishes), so the threads at work never exceed ``slots``.
    """

    def __init__(self, name: str, slots: int, queue: int) -> None:
        self.name, self.slots, self.queue = name, slots, queue
        self.waiting = 0
        self._free: asyncio.Semaphore | None = None  # made on first use, inside the server's event loop

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._free is None:
            self._free = asyncio.Semaphore(self.slots)
        free = self._free
        if free.locked() and self.waiting >= self.queue:
            raise HTTPException(503, f"the server is busy ({self.slots} {self.name} decoding, {self.waiting} "
                                     "waiting); try again in a moment", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            await free.acquire()
        finally:
            self.waiting -= 1
        loop = asyncio.get_running_loop()

        def release() -> None:
            with contextlib.suppress(RuntimeError):  # the server stopped meanwhile: nothing left to free
                loop.call_soon_threadsafe(free.release)

        job = _Job(fn, args, release)
        try:
            return await anyio.to_thread.run_sync(job, abandon_on_cancel=True)
        except BaseException:
            job.cancel()  # frees the slot now if the thread never started; a running job frees it as it ends
            raise


class _Job:
    """A function for a worker thread that releases its lane's slot exactly once: when it ends, or when it is
    cancelled before it started."""

    def __init__(self, fn: Callable[..., Any], args: tuple, release: Callable[[], Any]) -> None:
        self.fn, self.args, self.release = fn, args, release
        self.lock, self.state = threading.Lock(), "pending"

    def __call__(self) -> Any:
        with self.lock:
            if self.state != "pending":
                return None
            self.state = "running"
        try:
            return self.fn(*self.args)
        finally:
            self.release()

    def cancel(self) -> None:
        with self.lock:
            if self.state == "pending":
                self.state = "cancelled"
                self.release()


def decode_plan(data: bytes, name: str, size: int, max_pixels: int) -> tuple[int, int]:
    """Read the header only: (pixels the decode will produce, draft side), or an HTTP error (400, 413)."""
    if not data:
        raise HTTPException(400, "empty upload: the request carried no image bytes")
    target = REDUCE_TO * size
    try:
        info = probe_image(data, JPEG_SCALE**2 * max_pixels, draft=target, name=name)
    except ImageError as exc:
        raise _image_error(exc, max_pixels) from None
    width, height = info.decoded or (info.width, info.height)
    if width * height > max_pixels:
        shown = f"{info.width}x{info.height}"
        if (width, height) != (info.width, info.height):
            shown += f" {info.format} decodes to {width}x{height}"
        raise HTTPException(413, f"cannot use the upload: decompression bomb: {shown} = {width * height:,} pixels "
                                 f"> limit {max_pixels:,}")
    return width * height, target


@dataclass(frozen=True)
class Large:
    """What :func:`predict_small` returns for an image over :data:`LARGE_PIXELS`: run it in the large lane."""

    target: int


def predict_small(model: Any, data: bytes, name: str, top_k: int, tta: str,
                  max_pixels: int, explain: bool = False) -> list[dict[str, Any]] | Explained | Large:
    """Read the header; a small image is predicted right here (one thread hop, the common case), a large one
    is handed back to go to its own lane."""
    pixels, target = decode_plan(data, name, model.prep.size, max_pixels)
    if pixels > LARGE_PIXELS:
        return Large(target)
    return predict_upload(model, data, name, top_k, tta, max_pixels, target, explain)


@dataclass
class Explained:
    """Predictions with the Grad-CAM overlay of the top class (``/predict?explain=true``)."""

    predictions: list[dict[str, Any]]
    explanation: dict[str, Any]


def predict_upload(model: Any, data: bytes, name: str, top_k: int, tta: str, max_pixels: int,
                   target: int, explain: bool = False) -> list[dict[str, Any]] | Explained:
    """Decode (a JPEG at reduced scale), shrink to about ``target`` px a side, transform and classify."""
    try:
        img = open_image(data, model.prep.channels, max_pixels=JPEG_SCALE**2 * max_pixels, name=name, draft=target)
    except ImageError as exc:
        raise _image_error(exc, max_pixels) from None
    factor = min(img.size) // target
    if factor >= 2:  # box-filter down in Pillow first: the tensor and resize work no longer scale with the upload
        img = img.reduce(factor)
    x = fit_size(model.transform()(image_to_tensor(img)), model.prep.size)
    predictions = classify(model, x.unsqueeze(0), top_k, tta)[0]
    if not explain:
        return predictions
    top = predictions[0]
    with _EXPLAINING:  # Grad-CAM hooks the model's layer for the call: two at once would read each other's maps
        heat = gradcam(model, x.unsqueeze(0), [top["index"]])[0]
    png = overlay_png(x.cpu(), heat, f"{top['label']} {100 * top['probability']:.2f}%")
    return Explained(predictions, {"method": "grad-cam", "class": top["label"],
                                   "png_base64": base64.b64encode(png).decode("ascii")})


_EXPLAINING = threading.Lock()


def _image_error(exc: ImageError, max_pixels: int) -> HTTPException:
    if exc.reason.startswith("decompression bomb"):  # say the budget the operator set, not the header ceiling
        return HTTPException(413, "cannot use the upload: " + exc.reason.rsplit(" > limit ", 1)[0]
                             + f" > limit {max_pixels:,}")
    return HTTPException(400, f"cannot use the upload: {exc.reason}")
