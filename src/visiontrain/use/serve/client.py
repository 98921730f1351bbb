"""A small client for ``visiontrain serve`` (standard library only): one request on a fresh connection, and a
server started as its own process, ready once ``/health`` answers. The tests and benchmarks use it.

>>> status, body, headers = call("http://127.0.0.1:8000", path="/health")  # doctest: +SKIP
>>> status, body  # doctest: +SKIP
(200, {'status': 'ok'})
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit


def call(url: str, method: str = "GET", path: str = "/", body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, Any, dict[str, str]]:
    """(status, the JSON answer — or the text of any other —, the headers with lower-case names)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        kind = resp.getheader("content-type", "")
        data = json.loads(raw) if kind.startswith("application/json") else raw.decode("utf-8", "replace")
        return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def start_server(model: str, *args: str, host: str = "127.0.0.1",
                 ready_within_s: float = 120.0) -> tuple[subprocess.Popen, int]:
    """``visiontrain serve MODEL --host HOST --port 0 ARGS`` as a process; returns it and its port once the app
    answers ``/health`` (the socket listens at once, the model loads after)."""
    proc = subprocess.Popen([sys.executable, "-m", "visiontrain", "serve", model, "--host", host, "--port", "0",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(rf"http://{re.escape(host)}:(\d+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    port = int(match.group(1))
    deadline = time.monotonic() + ready_within_s
    while time.monotonic() < deadline:
        try:
            if call(f"http://{host}:{port}", path="/health", timeout=60)[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server never answered /health")
