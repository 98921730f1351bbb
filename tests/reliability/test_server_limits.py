"""The prediction service under hostile input, through a real uvicorn server on 127.0.0.1: random and mutated bodies
with random content types (raw and multipart) always get a JSON 4xx or a 200 — never a 5xx, never a dropped
server — and concurrent oversize uploads are cut off at the limit, so memory stays bounded. (The endpoints,
limits and errors one by one are tested in tests/use/test_serve_api.py.)"""

from __future__ import annotations

import http.client
import io
import json
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from visiontrain.checkpoint.format import save_checkpoint
from visiontrain.data.synthetic import make_shapes
from visiontrain.models import ModelInput, create_model
from visiontrain.use.loading import load
from visiontrain.use.serve import running_server
from visiontrain.use.serve.app import IMAGE_TYPES, Limits, create_app

MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    meta = {"model": {"name": "small_cnn", "args": {}, "head": None}, "classes": ["a", "b", "c"],
            "preprocessing": {"channels": 3, "size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                              "eval_transforms": [{"name": "Resize", "size": [32, 32]}]}}
    model = load(save_checkpoint(folder / "m", create_model("small_cnn", ModelInput(3, 32, 3)), meta))
    with running_server(create_app(model, Limits(max_bytes=MAX_BYTES, max_pixels=200 * 200))) as url:
        yield url


def _post(url: str, body: bytes, headers: dict[str, str], path: str = "/predict") -> tuple[int, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.getheader("content-type", "").startswith("application/json"), raw[:200]
        return resp.status, json.loads(raw)
    finally:
        conn.close()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_shapes(1, 32, 3, seed=3)[0][0].permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
_TYPES = st.sampled_from([*IMAGE_TYPES, "application/octet-stream", "text/plain", "image/svg+xml", "", "image/",
                          "multipart/form-data", "multipart/form-data; boundary=", "image/png; charset=utf-8",
                          "IMAGE/PNG", "application/json", "\x7f"])


@st.composite
def _body(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["random", "png", "flipped", "cut"]))
    if how == "random":
        return draw(st.binary(max_size=2048))
    data = bytearray(PNG)
    if how == "cut":
        return bytes(data[:draw(st.integers(0, len(data)))])
    if how == "flipped":
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _multipart(data: bytes, part_type: str, boundary: str, cut: int | None) -> tuple[bytes, dict[str, str]]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            f"Content-Type: {part_type}\r\n\r\n").encode("utf-8", "surrogateescape") + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return body[:cut] if cut is not None else body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _fuzz(url: str, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=_body(), kind=_TYPES, form=st.booleans(), boundary=st.sampled_from(["b", "x" * 70, "--", "é"]),
           cut=st.none() | st.integers(0, 400), top_k=st.sampled_from(["", "?top_k=2", "?top_k=0", "?top_k=x"]))
    def check(data: bytes, kind: str, form: bool, boundary: str, cut: int | None, top_k: str) -> None:
        if form:
            body, headers = _multipart(data, kind or "image/png", boundary, cut)
        else:
            body, headers = data, ({"Content-Type": kind} if kind else {})
        headers = {k: v.encode("latin-1", "replace").decode("latin-1") for k, v in headers.items()}
        status, out = _post(url, body, headers, path="/predict" + top_k)
        assert status == 200 or 400 <= status < 500, (status, out)
        assert ("predictions" in out) if status == 200 else isinstance(out.get("error"), str), out

    check()


def test_random_uploads_get_a_json_4xx_or_200_never_5xx(server: str) -> None:
    _fuzz(server, 80)
    assert _post(server, PNG, {"Content-Type": "image/png"})[0] == 200  # still serving


@pytest.mark.slow
def test_random_uploads_many(server: str) -> None:
    _fuzz(server, 2000)


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def test_concurrent_oversize_uploads_are_cut_off_and_memory_stays_bounded(server: str) -> None:
    """Eight clients stream 8 MiB each without declaring a length: each is refused at 64 KiB, so the server
    (in this process) never holds the uploads — its memory grows by far less than the 64 MiB sent."""
    parts = urlsplit(server)
    statuses: list[int | str] = []
    chunk = b"\0" * 65536

    def upload() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            conn.request("POST", "/predict", body=(chunk for _ in range(128)), encode_chunked=True,
                         headers={"Content-Type": "image/png"})
            statuses.append(conn.getresponse().status)
        except (BrokenPipeError, ConnectionResetError):
            statuses.append("cut off")  # the server closed the connection at the limit while we were sending
        finally:
            conn.close()

    before = _rss_bytes()
    threads = [threading.Thread(target=upload) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    grown = _rss_bytes() - before
    assert len(statuses) == 8 and set(statuses) <= {413, "cut off"}, statuses
    assert grown < 32 * 2**20, f"memory grew by {grown / 2**20:.1f} MiB for 64 MiB of refused uploads"
    assert _post(server, PNG, {"Content-Type": "image/png"})[0] == 200
