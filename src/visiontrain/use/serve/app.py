"""The prediction service as a FastAPI app: ``POST /predict``, ``GET /health``, ``GET /model``, a page at ``/``.

The model is fixed when the app is made (:func:`create_app`); no request can name a file or URL to load.
Uploads are bounded before they are read: a declared ``Content-Length`` over the limit gets 413 at once and
a body streamed past it is cut off with 413 (:class:`BodyLimit`), so nothing large is ever spooled. Then
only image content types are accepted (415), the decoder refuses images over the pixel limit (413) and
anything that is not an image (400). Decoding and inference run in worker threads (at most ``threads`` at
once), so the event loop keeps answering while a model runs; a request that takes longer than the timeout
gets 504. Every error is JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from visiontrain.data.images import image_to_tensor, open_image
from visiontrain.errors import ImageError
from visiontrain.use.exported import ExportedModel
from visiontrain.use.loading import LoadedModel
from visiontrain.use.predict import classify, fit_size

log = logging.getLogger("visiontrain.serve")

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif", "image/tiff")
RAW_TYPES = (*IMAGE_TYPES, "application/octet-stream")
_PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; "
             "connect-src 'self'; base-uri 'none'; form-action 'none'")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_bytes: int = 10 * 2**20  # request body, bytes
    max_pixels: int = 40_000_000  # declared width x height of the image (decompression bombs)
    timeout_s: float = 30.0  # decoding + inference, seconds
    threads: int = 4  # requests decoded/predicted at the same time
    max_top_k: int = 100
    content_types: tuple[str, ...] = field(default=RAW_TYPES)


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, decided before the body is read or spooled."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status = 413 if declared.isdigit() else 400
            await JSONResponse({"error": self._message() if status == 413 else "bad Content-Length header"},
                               status_code=status, headers={"Connection": "close"})(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # chunked uploads declare no length: count as they come
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body too large: the limit is {self.max_bytes:,} bytes"


def create_app(model: LoadedModel | ExportedModel, limits: Limits | None = None, *, tta: str = "none",
               top_k: int = 5) -> FastAPI:
    """The service for one loaded model (see the module docstring for its limits)."""
    limits = limits or Limits()
    limiter = anyio.CapacityLimiter(limits.threads)
    app = FastAPI(title="visiontrain prediction service", version="1",
                  description=f"Image classifier over {len(model.classes)} classes.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_bytes)
    _add_error_handlers(app)
    info = model_info(model, limits, tta)
    app.state.model_info = info
    page = resources.files("visiontrain.use.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": _PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/health", summary="liveness: the model is loaded and the server answers")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/model", summary="the model: classes, input size, metrics, limits")
    async def model_endpoint() -> dict[str, Any]:
        return info

    @app.post("/predict", summary="classify one image", openapi_extra=_PREDICT_BODY, responses=_ERRORS)
    async def predict_endpoint(request: Request, top_k: int = Query(top_k, ge=1, le=limits.max_top_k,
                                                                     description="how many classes to return")):
        data, name = await read_upload(request, limits)
        try:
            with anyio.fail_after(limits.timeout_s):
                predictions = await anyio.to_thread.run_sync(_predict_bytes, model, data, name, top_k, tta,
                                                             limits.max_pixels, limiter=limiter,
                                                             abandon_on_cancel=True)
        except TimeoutError:
            raise HTTPException(504, f"prediction took longer than {limits.timeout_s:g} s") from None
        return {"predictions": predictions, "top": predictions[0]}

    return app


async def read_upload(request: Request, limits: Limits) -> tuple[bytes, str]:
    """The image bytes of a multipart upload (its one file field) or of a raw body, and a name for errors."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4) as form:
            files = [v for v in form.values() if hasattr(v, "read")]
            if not files:
                raise HTTPException(400, "the form has no file; send the image as a file field, e.g. "
                                         "curl -F file=@cat.jpg")
            upload = files[0]
            part = (upload.content_type or "application/octet-stream").split(";")[0].strip().lower()
            _check_type(part, limits)
            return await upload.read(), upload.filename or "upload"
    if not media:
        raise HTTPException(415, "missing Content-Type; send multipart/form-data or an image type such as image/png")
    _check_type(media, limits)
    data = await request.body()
    return data, "upload"


def _check_type(media: str, limits: Limits) -> None:
    if media not in limits.content_types:
        raise HTTPException(415, f"content type {media!r} is not accepted; send one of: "
                                 f"{', '.join(limits.content_types)} (or multipart/form-data)")


def _predict_bytes(model: LoadedModel | ExportedModel, data: bytes, name: str, top_k: int, tta: str,
                   max_pixels: int) -> list[dict[str, Any]]:
    if not data:
        raise HTTPException(400, "empty upload: the request carried no image bytes")
    try:
        image = image_to_tensor(open_image(data, model.prep.channels, max_pixels=max_pixels, name=name))
    except ImageError as exc:
        status = 413 if exc.reason.startswith("decompression bomb") else 400
        raise HTTPException(status, f"cannot use the upload: {exc.reason}") from None
    x = fit_size(model.transform()(image), model.prep.size)
    return classify(model, x.unsqueeze(0), top_k, tta)[0]


def model_info(model: LoadedModel | ExportedModel, limits: Limits, tta: str) -> dict[str, Any]:
    """What ``GET /model`` says; never the model's path on the server's disk."""
    meta = model.meta
    return {
        "name": (meta.get("model") or {}).get("name"),
        "format": getattr(model, "format", "checkpoint"),
        "task": meta.get("task", "classification"),
        "classes": model.classes,
        "input": {"channels": model.prep.channels, "size": model.prep.size},
        "metrics": meta.get("metrics") or {},
        "tta": tta,
        "limits": {k: v for k, v in asdict(limits).items() if k != "threads"},
    }


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"example": {"error": text}}}}
    for code, text in ((400, "not a readable image"), (413, "body or image too large"),
                       (415, "content type not accepted"), (422, "bad query parameter"), (504, "timed out"))}

_PREDICT_BODY = {"requestBody": {"required": True, "description": "an image: a multipart file field or the raw bytes",
                                 "content": {
                                     "multipart/form-data": {"schema": {"type": "object", "properties": {
                                         "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
                                     **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES}}}}
