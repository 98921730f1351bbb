"""The prediction service attacked through a real uvicorn server on 127.0.0.1 with real sockets: a flood of
tiny PNGs that declare huge images while small requests are timed, slowloris connections, a connection flood,
a chunked upload past the limit, and clients that hang up mid-request. One cheap round of each here; the
multi-round campaigns are marked slow. (benchmarks/attack_serve.py measures the same against the CLI.)"""

from __future__ import annotations

import collections
import http.client
import io
import logging
import socket
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from visiontrain.checkpoint.format import save_checkpoint
from visiontrain.data.synthetic import make_shapes
from visiontrain.models import ModelInput, create_model
from visiontrain.use.loading import load
from visiontrain.use.serve import running_server
from visiontrain.use.serve.app import Limits, create_app


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    meta = {"model": {"name": "small_cnn", "args": {}, "head": None}, "classes": ["a", "b", "c"],
            "preprocessing": {"channels": 3, "size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                              "eval_transforms": [{"name": "Resize", "size": [32, 32]}]}}
    net = create_model("small_cnn", ModelInput(3, 32, 3))
    return load(save_checkpoint(tmp_path_factory.mktemp("serve") / "m", net, meta))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


SMALL = [_png(Image.fromarray(x.permute(1, 2, 0).numpy())) for x in make_shapes(4, 32, 3, seed=5)[0]]


def _post(url: str, body: bytes) -> tuple[int, dict[str, str]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def _flood_round(url: str, big: bytes, flooders: int, timed: int, seconds: float) -> tuple[list[float], dict, dict]:
    """``flooders`` clients send ``big`` back to back while ``timed`` clients send small PNGs; seconds per small
    request, and the status counts of both."""
    small_status: collections.Counter = collections.Counter()
    big_status: collections.Counter = collections.Counter()
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def flood() -> None:
        while time.monotonic() < stop:
            big_status[_post(url, big)[0]] += 1

    def small(i: int) -> None:
        while time.monotonic() < stop:
            start = time.perf_counter()
            small_status[_post(url, SMALL[i % len(SMALL)])[0]] += 1
            latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=flood) for _ in range(flooders)]
    threads += [threading.Thread(target=small, args=(i,)) for i in range(timed)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return sorted(latencies), dict(small_status), dict(big_status)


def _p99(latencies: list[float]) -> float:
    return latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]


def test_a_flood_of_large_images_is_shed_and_small_requests_stay_fast(model) -> None:
    # 16 MP each (under the pixel budget, so they are decoded, in the large-image lane), 15 KB on the wire.
    big = _png(Image.new("L", (4000, 4000)))
    with running_server(create_app(model, Limits())) as url:
        latencies, small, flood = _flood_round(url, big, flooders=6, timed=1, seconds=2)
    assert set(small) == {200} and len(latencies) >= 3, small
    assert _p99(latencies) < 2.0, f"small requests p99 {_p99(latencies):.2f} s under the flood ({flood})"
    assert set(flood) <= {200, 503} and flood.get(503, 0) > 0, flood  # shed at once, not queued until 504


def test_decoding_runs_in_parallel_so_a_large_decode_does_not_hold_up_a_small_one() -> None:
    """The server's workers share Pillow, which used to run under one process-wide lock: while a large JPEG
    decodes (most of a second), small images must still decode in milliseconds, not wait for it."""
    from visiontrain.data.images import open_image

    noise = np.random.default_rng(0).integers(0, 256, (4000, 4000), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=75, progressive=True)  # slow to decode: the point
    started, finished, took = threading.Event(), threading.Event(), []

    def large() -> None:
        started.set()
        start = time.perf_counter()
        open_image(buf.getvalue(), 1, max_pixels=4000 * 4000)
        took.append(time.perf_counter() - start)
        finished.set()

    thread = threading.Thread(target=large)
    thread.start()
    started.wait(10)
    waits = []
    while not finished.is_set():
        start = time.perf_counter()
        open_image(SMALL[0], 3)
        waits.append(time.perf_counter() - start)
        time.sleep(0.002)
    thread.join(60)
    assert max(waits) < took[0] / 4, f"a small decode waited {max(waits):.2f} s during a {took[0]:.2f} s one"


@pytest.mark.slow
@pytest.mark.parametrize("side, fmt", [(6000, "PNG"), (4000, "PNG"), (8192, "JPEG"), (2000, "PNG")])
def test_flood_campaign(model, side: int, fmt: str) -> None:
    """12 flooders and 4 timed clients for 10 s per kind: 36 MP PNG (over the budget: 413), 16 MP PNG (large
    lane), a 67 MP JPEG (decoded at 1/8 scale), 4 MP PNG (the main lane's largest)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, format=fmt)
    with running_server(create_app(model, Limits())) as url:
        latencies, small, flood = _flood_round(url, buf.getvalue(), flooders=12, timed=4, seconds=10)
    assert set(small) <= {200, 503} and small.get(200, 0) > 0.9 * len(latencies), small
    assert _p99(latencies) < 3.0, f"p99 {_p99(latencies):.2f} s, median {latencies[len(latencies) // 2]:.2f} s"
    assert set(flood) <= {200, 413, 503}, flood


def _closed_within(sock: socket.socket, seconds: float) -> tuple[float | None, bytes]:
    """Seconds until the server closed ``sock`` (None: still open after ``seconds``), and what it sent."""
    start, got = time.monotonic(), b""
    sock.settimeout(0.1)
    while time.monotonic() - start < seconds:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start, got
        if not data:
            return time.monotonic() - start, got
        got += data
    return None, got


@pytest.fixture(scope="module")
def strict_server(model):
    limits = Limits(header_timeout_s=0.5, read_timeout_s=1.0, max_bytes=64 * 1024, max_connections=8)
    with running_server(create_app(model, limits)) as url:
        yield url


@pytest.fixture(scope="module")
def small_body_server(model):
    with running_server(create_app(model, Limits(max_bytes=64 * 1024))) as url:
        yield url


def _connect(url: str, first: bytes) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    if first:
        sock.sendall(first)
    return sock


HEAD = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"


@pytest.mark.parametrize("first, deadline, answer", [
    (b"", 0.5, b""),  # connects and says nothing: closed quietly
    (HEAD + b"X-Slow: ", 0.5, b"HTTP/1.1 408"),  # headers that never end
    (HEAD + b"Content-Length: 5000\r\n\r\n" + b"\x89PNG", 1.0, b"HTTP/1.1 408"),  # a body that never ends
], ids=["idle", "partial-headers", "partial-body"])
def test_slowloris_connections_are_closed_at_the_deadline(strict_server: str, first: bytes, deadline: float,
                                                          answer: bytes) -> None:
    with _connect(strict_server, first) as sock:
        for _ in range(3):  # keep dripping bytes: a byte now and then must not reset the deadline
            time.sleep(deadline / 4)
            if first:
                sock.sendall(b"a")
        closed_after, got = _closed_within(sock, deadline + 3)
    assert closed_after is not None, f"still open {deadline + 3:g} s after its deadline"
    assert got.startswith(answer), got[:80]
    assert _post(strict_server, SMALL[0])[0] == 200


@pytest.mark.slow
def test_slowloris_campaign(model) -> None:
    """3 rounds of 40 slow connections (half trickling headers, half a body, a byte every 0.2 s) against the
    default connection cap (128): every one closed by its deadline, and small requests answered meanwhile."""
    limits = Limits(header_timeout_s=1.0, read_timeout_s=2.0)
    with running_server(create_app(model, limits)) as url:
        for _ in range(3):
            socks = [_connect(url, HEAD + (b"Content-Length: 5000\r\n\r\n" if i % 2 else b"X-Slow: "))
                     for i in range(40)]
            start, closed = time.monotonic(), {}
            while len(closed) < len(socks) and time.monotonic() - start < 6:
                for i, sock in enumerate(socks):
                    if i not in closed:
                        try:
                            sock.sendall(b"a")
                        except OSError:
                            closed[i] = time.monotonic() - start
                assert _post(url, SMALL[0])[0] == 200
                time.sleep(0.2)
            for sock in socks:
                sock.close()
            assert len(closed) == len(socks) and max(closed.values()) < 4.0, closed


def test_past_the_connection_cap_a_request_gets_503_and_is_closed(strict_server: str) -> None:
    held = [_connect(strict_server, HEAD) for _ in range(8)]  # 8 open connections: the cap
    try:
        time.sleep(0.1)
        with _connect(strict_server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") as extra:
            closed_after, got = _closed_within(extra, 3)
        assert got.startswith(b"HTTP/1.1 503") and b"retry-after: " in got.lower(), got[:200]
        assert closed_after is not None
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert _post(strict_server, SMALL[0])[0] == 200  # the slots came back


def test_a_chunked_upload_past_the_limit_gets_413_and_the_connection_is_closed(small_body_server: str) -> None:
    chunk = b"x" * 32 * 1024
    with _connect(small_body_server, HEAD + b"Transfer-Encoding: chunked\r\n\r\n") as sock:
        for _ in range(3):  # 96 KiB > the 64 KiB limit
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 413") and b"connection: close" in reply.lower(), reply[:300]
        closed_after, _ = _closed_within(sock, 3)
        assert closed_after is not None, "the server kept the connection open (and read what the client sent)"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_that_hangs_up_mid_request_logs_one_line(small_body_server: str) -> None:
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("visiontrain.serve", "uvicorn.error", "uvicorn.asgi")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with _connect(small_body_server, HEAD + b"Content-Length: 5000\r\n\r\n" + b"\x89PNG\r\n"):
            time.sleep(0.2)  # the app is reading the body now; the client goes away
        deadline = time.monotonic() + 5
        while not handler.records and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # anything logged after the first line is caught too
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    lines = [r.getMessage() for r in handler.records]
    assert len(lines) == 1 and "went away" in lines[0], lines
    assert not any(r.exc_info for r in handler.records)  # no traceback
