"""The prediction service through a real uvicorn server on 127.0.0.1: endpoints, limits, errors, concurrency."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from visiontrain.data.synthetic import SHAPES, make_shapes
from visiontrain.use.export.runtime import load_model
from visiontrain.use.serve import build_app, running_server
from visiontrain.use.serve.app import Limits, create_app
from visiontrain.use.serve.client import call

MAX_BYTES = 64 * 1024


def _png(seed: int, size: int = 32) -> tuple[bytes, str]:
    images, labels = make_shapes(1, size, 3, seed=seed)
    buf = io.BytesIO()
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue(), SHAPES[int(labels[0])]


def multipart(data: bytes, filename: str = "shape.png", content_type: str = "image/png") -> tuple[bytes, dict]:
    boundary = "visiontrain-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def server(synthetic_run) -> str:
    app = build_app(synthetic_run.dir, max_bytes=MAX_BYTES, max_pixels=200 * 200)
    with running_server(app) as url:
        yield url


def test_health_model_and_openapi(server: str) -> None:
    assert call(server, path="/health")[:2] == (200, {"status": "ok"})
    status, info, _ = call(server, path="/model")
    assert status == 200
    assert info["classes"] == list(SHAPES) and info["input"] == {"channels": 3, "size": 32}
    assert info["format"] == "checkpoint" and "val/accuracy" in info["metrics"]
    assert info["limits"]["max_bytes"] == MAX_BYTES
    assert not any("/" in str(v) and Path(str(v)).exists() for v in info.values())  # no server paths leak
    status, schema, _ = call(server, path="/openapi.json")
    assert status == 200 and {"/predict", "/health", "/model"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/png" in body


def test_predict_multipart_and_raw_bytes(server: str) -> None:
    for seed in range(4):
        data, truth = _png(seed + 500)
        body, headers = multipart(data)
        status, out, _ = call(server, "POST", "/predict?top_k=3", body, headers)
        assert status == 200, out
        assert out["top"]["label"] == truth and len(out["predictions"]) == 3
        probs = [p["probability"] for p in out["predictions"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        status, raw, _ = call(server, "POST", "/predict?top_k=3", data, {"Content-Type": "image/png"})
        assert status == 200 and raw == out  # the same answer either way


def test_explain_returns_the_grad_cam_overlay_as_a_png(server: str) -> None:
    import base64

    data, truth = _png(777)
    assert call(server, path="/model")[1]["explain"] is True  # what the page's "why?" toggle asks first
    status, out, _ = call(server, "POST", "/predict?top_k=2&explain=true", data, {"Content-Type": "image/png"})
    assert status == 200, out
    assert out["top"]["label"] == truth and out["explanation"]["class"] == truth
    assert out["explanation"]["method"] == "grad-cam"
    with Image.open(io.BytesIO(base64.b64decode(out["explanation"]["png_base64"]))) as picture:
        assert picture.format == "PNG" and picture.width > 200
        assert picture.info["Title"] == f"{truth} {100 * out['top']['probability']:.2f}%"
    plain = call(server, "POST", "/predict?top_k=2", data, {"Content-Type": "image/png"})[1]
    assert "explanation" not in plain and plain["predictions"] == out["predictions"]


@pytest.mark.parametrize(("body", "headers", "status", "fragment"), [
    (b"hello", {"Content-Type": "text/plain"}, 415, "not accepted"),
    (b"hello", {}, 415, "Content-Type"),
    (b"<html>not an image</html>", {"Content-Type": "image/jpeg"}, 400, "HTML"),
    (b"", {"Content-Type": "image/png"}, 400, "empty upload"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", {"Content-Type": "application/octet-stream"}, 400, "truncated"),
])
def test_bad_uploads_get_json_errors(server: str, body: bytes, headers: dict, status: int, fragment: str) -> None:
    got, out, _ = call(server, "POST", "/predict", body, headers)
    assert got == status and fragment in out["error"], out


def test_bad_multipart_and_query(server: str) -> None:
    data, _ = _png(1)
    body, headers = multipart(data, content_type="text/html")
    assert call(server, "POST", "/predict", body, headers)[0] == 415
    empty = b"--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--b--\r\n"
    got, out, _ = call(server, "POST", "/predict", empty, {"Content-Type": "multipart/form-data; boundary=b"})
    assert got == 400 and "no file" in out["error"]
    got, out, _ = call(server, "POST", "/predict?top_k=0", data, {"Content-Type": "image/png"})
    assert got == 422 and "top_k" in out["error"]
    assert call(server, path="/nowhere")[0] == 404
    assert call(server, "GET", "/predict")[0] == 405


def test_too_many_pixels_is_413(server: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), "white").save(buf, format="PNG")  # 90,000 px > 40,000; only a few KB
    assert len(buf.getvalue()) < MAX_BYTES
    got, out, _ = call(server, "POST", "/predict", buf.getvalue(), {"Content-Type": "image/png"})
    assert got == 413 and "decompression bomb" in out["error"]


@pytest.mark.parametrize(("side", "fmt", "status", "fragment"), [
    (1600, "JPEG", 200, ""),  # 2.56 MP declared, decoded at 1/8 scale: 200x200, the limit itself
    (1600, "PNG", 413, "1600x1600 = 2,560,000 pixels > limit 40,000"),  # no reduced decode for PNG
    (1000, "JPEG", 413, "1000x1000 JPEG decodes to 250x250 = 62,500 pixels > limit 40,000"),  # 1/4: 4x 32 px
])
def test_large_jpegs_decode_at_reduced_scale_within_the_pixel_budget(server: str, side: int, fmt: str, status: int,
                                                                     fragment: str) -> None:
    buf = io.BytesIO()
    Image.new("L", (side, side), 90).save(buf, format=fmt)
    got, out, _ = call(server, "POST", "/predict", buf.getvalue(), {"Content-Type": f"image/{fmt.lower()}"})
    assert got == status and fragment in out.get("error", ""), out
    assert Limits().max_pixels <= 2**24  # the default budget: 16.8 MP, not the 40 MP it was


def _raw_exchange(url: str, payload: bytes) -> bytes:
    """Send bytes over one socket and read one response (headers + Content-Length body)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(payload)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        while len(body) < length:
            body += sock.recv(65536)
        return head + b"\r\n\r\n" + body


def test_body_limit_answers_413_before_reading_the_body(server: str) -> None:
    # A declared length over the limit is refused from the headers alone: no body byte is ever sent.
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 999999999\r\n\r\n"
    reply = _raw_exchange(server, head)
    assert reply.startswith(b"HTTP/1.1 413") and b"too large" in reply
    # A chunked body declares nothing: it is counted as it arrives and cut off past the limit.
    chunk = b"x" * (MAX_BYTES + 10)
    chunked = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n")
    assert _raw_exchange(server, chunked).startswith(b"HTTP/1.1 413")
    assert call(server, path="/health")[0] == 200  # and the server is still there


def test_page_is_served_with_a_content_security_policy(server: str) -> None:
    status, page, headers = call(server, path="/")
    assert status == 200 and 'id="file"' in page and "fetch(\"predict" in page
    assert "default-src 'none'" in headers["content-security-policy"]


class _SlowModel:
    """Wraps a loaded model so that inference blocks until released: shows what runs while it waits."""

    def __init__(self, model) -> None:
        self.inner, self.started, self.release = model, threading.Event(), threading.Event()

    def __call__(self, x):
        self.started.set()
        self.release.wait(timeout=60)
        return self.inner(x)


@pytest.fixture
def slow_server(synthetic_run):
    model = load_model(synthetic_run.dir, device="cpu")
    slow = _SlowModel(model.model)
    model.model = slow
    app = create_app(model, replace(Limits(), timeout_s=2.0, threads=2))
    with running_server(app) as url:
        yield url, slow
    slow.release.set()


def test_inference_does_not_block_the_event_loop_and_times_out(slow_server) -> None:
    url, slow = slow_server
    data, _ = _png(3)
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(
        call(url, "POST", "/predict", data, {"Content-Type": "image/png"})))
    worker.start()
    assert slow.started.wait(timeout=30)  # the prediction is now stuck inside the model …
    assert call(url, path="/health")[:2] == (200, {"status": "ok"})  # … and the server still answers
    assert call(url, path="/model")[0] == 200
    assert not results  # the health checks came back while the prediction was still running
    worker.join(timeout=60)
    status, out, _ = results[0]
    assert status == 504 and "longer than 2 s" in out["error"]
    slow.release.set()
    assert call(url, "POST", "/predict", data, {"Content-Type": "image/png"})[0] == 200


def test_serve_cli_with_an_onnx_export(synthetic_run, tmp_path: Path) -> None:
    from visiontrain.use.export.write import export

    onnx = export(synthetic_run.dir, "onnx", tmp_path).path
    env = {**os.environ, "VISIONTRAIN_SERVE_TOKEN": "from-the-environment"}  # not on the command line: ps shows that
    proc = subprocess.Popen([sys.executable, "-m", "visiontrain", "serve", str(onnx), "--port", "0",
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    auth = {"Authorization": "Bearer from-the-environment"}
    try:
        line = proc.stdout.readline()  # blocks until the server prints its address (or dies)
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.poll())
        url = match.group(0)
        deadline = time.monotonic() + 60
        while True:
            try:
                status, info, _ = call(url, path="/model", headers=auth)
                break
            except ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert status == 200 and info["format"] == "onnx" and info["classes"] == list(SHAPES)
        data, truth = _png(42)
        assert call(url, "POST", "/predict", data, {"Content-Type": "image/png"})[0] == 401
        status, out, _ = call(url, "POST", "/predict", data, {"Content-Type": "image/png", **auth})
        assert status == 200 and out["top"]["label"] == truth
        assert info["explain"] is False  # an export has no gradients: no toggle, and asking is a 400
        status, out, _ = call(url, "POST", "/predict?explain=true", data, {"Content-Type": "image/png", **auth})
        assert status == 400 and "not an export" in out["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_listening_socket_is_tcp_so_responses_are_not_delayed() -> None:
    # asyncio disables Nagle only on sockets created as IPPROTO_TCP; without it every keep-alive
    # response waited ~40 ms for a delayed ACK (measured: 47 ms → 0.5 ms per /health).
    from visiontrain.use.serve import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0
    finally:
        sock.close()
