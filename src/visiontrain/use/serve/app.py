"""The prediction service as a FastAPI app: ``POST /predict``, ``GET /health``, ``GET /model``, a page at ``/``.

The model is fixed when the app is made (:func:`create_app`); no request can name a file or URL to load.
Uploads are bounded before they are read: a declared ``Content-Length`` over the limit gets 413 at once and
a body streamed past it is cut off with 413 (:class:`BodyLimit`), so nothing large is ever spooled; a response
sent before its request's body was read closes the connection, so the rest of the body is never swallowed.
Then only image content types are accepted (415), the header is read and an image that would decode to more
than the pixel budget is refused (413), anything that is not an image gets 400. Decoding and inference run in
worker threads, several at once, with a bounded queue (503 past it; see :mod:`~visiontrain.use.serve.work`),
so the event loop keeps answering while a model runs; a request that takes longer than the timeout gets 504.
Who may call is checked first (:mod:`~visiontrain.use.serve.guard`). Every error is JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from visiontrain.errors import ConfigError
from visiontrain.use.export.runtime import ExportedModel
from visiontrain.use.loading import LoadedModel
from visiontrain.use.serve.guard import DOCS_STATIC, Access, Guard
from visiontrain.use.serve.work import Explained, Lane, Large, predict_small, predict_upload

log = logging.getLogger("visiontrain.serve")

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif", "image/tiff")
RAW_TYPES = (*IMAGE_TYPES, "application/octet-stream")
_PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; "
             "connect-src 'self'; base-uri 'none'; form-action 'none'")


@dataclass(frozen=True)
class Limits:
    """What one request, and all of them together, may ask of the server (defaults: ``visiontrain serve``'s)."""

    max_bytes: int = 10 * 2**20  # request body, bytes
    max_pixels: int = 2**24  # pixels decoded for one image (a JPEG counts at its reduced decode size)
    timeout_s: float = 30.0  # waiting for a worker + decoding + inference, seconds
    threads: int = 4  # images decoded/predicted at the same time (plus threads // 4, at least 1, large ones)
    queue: int = 16  # requests that may wait for a worker (a quarter of that for large images); then 503
    header_timeout_s: float = 10.0  # a request's headers must arrive within this, seconds
    read_timeout_s: float = 30.0  # ... and its body within this after them
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 128  # open connections; past it a new one gets 503
    max_top_k: int = 100
    content_types: tuple[str, ...] = field(default=RAW_TYPES)

    def __post_init__(self) -> None:
        for name, (low, high) in _BOUNDS.items():
            value, counts = getattr(self, name), isinstance(low, int)
            ok = not isinstance(value, bool) and isinstance(value, int if counts else int | float) \
                and math.isfinite(value) and (low <= value if counts else low < value) and value <= high
            if not ok:
                kind = f"an integer in {low:,}..{high:,}" if counts else f"seconds above {low:g}, at most {high:g}"
                raise ConfigError(f"serve limit {name} must be {kind}, got {value!r}")


# What a limit may be: counts are integers in [low, high]; durations are seconds in (low, high].
_BOUNDS: dict[str, tuple[int, int] | tuple[float, float]] = {
    "max_bytes": (1, 2**31), "max_pixels": (1, 2**31), "threads": (1, 256), "queue": (0, 10_000),
    "max_connections": (1, 100_000), "max_top_k": (1, 10_000), "timeout_s": (0.0, 86_400.0),
    "header_timeout_s": (0.0, 3600.0), "read_timeout_s": (0.0, 86_400.0), "keep_alive_s": (0.0, 3600.0)}
TIMED_OUT = "visiontrain.timed_out"  # scope key: the protocol closed this request for being too slow


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, decided before the body is read or spooled; and a
    response that starts before the request's body was all read closes the connection (``Connection: close``)
    — else the server would go on reading and discarding whatever the client still sends."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status = 413 if declared.isdigit() else 400
            await JSONResponse({"error": self._message() if status == 413 else "bad Content-Length header"},
                               status_code=status, headers={"Connection": "close"})(scope, receive, send)
            return
        seen = 0
        body_done = declared in (None, b"0") and b"transfer-encoding" not in headers  # no body to read

        async def limited() -> dict:
            nonlocal seen, body_done
            message = await receive()
            seen += len(message.get("body", b""))
            body_done = body_done or not message.get("more_body", False)
            if seen > self.max_bytes:  # chunked uploads declare no length: count as they come
                raise HTTPException(413, self._message())
            return message

        async def closing(message: dict) -> None:
            if message["type"] == "http.response.start" and not body_done:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, limited, closing)

    def _message(self) -> str:
        return f"request body too large: the limit is {self.max_bytes:,} bytes"


def create_app(model: LoadedModel | ExportedModel, limits: Limits | None = None, *, tta: str = "none",
               top_k: int = 5, access: Access | None = None) -> FastAPI:
    """The service for one loaded model (see the module docstring for its limits)."""
    limits = limits or Limits()
    access = access or Access()
    small = Lane("image workers", limits.threads, limits.queue)
    large = Lane("large-image workers", max(1, limits.threads // 4), max(1, limits.queue // 4))
    # FastAPI's /docs and /redoc load Swagger UI and ReDoc from a CDN (a blank page offline); fastapi-offline
    # serves the same files from the package, under /docs/static.
    app = FastAPIOffline(title="visiontrain prediction service", version="1", static_url=DOCS_STATIC,
                         description=f"Image classifier over {len(model.classes)} classes.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_bytes)
    if access.cors:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(access.cors), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"], max_age=600)
    app.add_middleware(Guard, access=access)
    _add_error_handlers(app)
    info = model_info(model, limits, tta)
    app.state.model_info, app.state.limits = info, limits
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
                                                                     description="how many classes to return"),
                               explain: bool = Query(False, description="add a Grad-CAM overlay of the top class "
                                                     "(PNG, base64) as 'explanation'; a served run or checkpoint "
                                                     "only, with the explain extra")):
        if explain:
            _check_explainable(model)
        data, name = await read_upload(request, limits)
        try:
            with anyio.fail_after(limits.timeout_s):
                answer = await small.run(predict_small, model, data, name, top_k, tta, limits.max_pixels, explain)
                if isinstance(answer, Large):
                    answer = await large.run(predict_upload, model, data, name, top_k, tta, limits.max_pixels,
                                             answer.target, explain)
        except TimeoutError:
            raise HTTPException(504, f"prediction took longer than {limits.timeout_s:g} s") from None
        if isinstance(answer, Explained):
            return {"predictions": answer.predictions, "top": answer.predictions[0],
                    "explanation": answer.explanation}
        return {"predictions": answer, "top": answer[0]}

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


def _check_explainable(model: LoadedModel | ExportedModel) -> None:
    if not isinstance(model, LoadedModel) or model.meta.get("task", "classification") != "classification":
        raise HTTPException(400, "explain needs the PyTorch model of a classifier (Grad-CAM follows its "
                            "gradients): serve the run folder or checkpoint, not an export")
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        raise HTTPException(400, "explain needs the grad-cam package on the server: pip install "
                            "'visiontrain[explain]'")


def model_info(model: LoadedModel | ExportedModel, limits: Limits, tta: str) -> dict[str, Any]:
    """What ``GET /model`` says; never the model's path on the server's disk."""
    meta = model.meta
    return {
        "name": (meta.get("model") or {}).get("name"),
        "format": getattr(model, "format", "checkpoint"),
        "task": meta.get("task", "classification"),
        "classes": model.classes,
        **({"thresholds": meta["thresholds"]} if "thresholds" in meta else {}),
        "input": {"channels": model.prep.channels, "size": model.prep.size},
        "metrics": meta.get("metrics") or {},
        "tta": tta,
        # the page offers its "why?" toggle (Grad-CAM) only where /predict?explain=true can answer
        "explain": isinstance(model, LoadedModel) and meta.get("task", "classification") == "classification"
        and importlib.util.find_spec("pytorch_grad_cam") is not None,
        "limits": {k: v for k, v in asdict(limits).items() if k not in ("threads", "queue", "max_connections")},
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

    @app.exception_handler(ClientDisconnect)
    async def went_away(request: Request, exc: ClientDisconnect) -> JSONResponse:
        if not request.scope.get(TIMED_OUT):  # the protocol said why it closed the connection already
            client = request.client
            log.warning("client %s went away before its request was read (%s %s)",
                        f"{client.host}:{client.port}" if client else "?", request.method, request.url.path)
        return JSONResponse({"error": "client disconnected"}, status_code=400)  # never delivered

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"example": {"error": text}}}}
    for code, text in ((400, "not a readable image, or a Host not allowed"), (401, "missing or wrong token"),
                       (403, "cross-origin request refused"), (413, "body or image too large"),
                       (415, "content type not accepted"), (422, "bad query parameter"),
                       (503, "busy: try again after Retry-After seconds"), (504, "timed out"))}

_PREDICT_BODY = {"requestBody": {"required": True, "description": "an image: a multipart file field or the raw bytes",
                                 "content": {
                                     "multipart/form-data": {"schema": {"type": "object", "properties": {
                                         "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
                                     **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES}}}}
