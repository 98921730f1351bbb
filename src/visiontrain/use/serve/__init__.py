"""``visiontrain serve``: a trained model (run folder, checkpoint or export) behind HTTP, with a web page.

>>> serve("runs/demo", port=8000)  # serves until Ctrl-C  # doctest: +SKIP
serving small_cnn (4 classes) on http://127.0.0.1:8000 — page: /, API docs: /docs

Limits, timeouts and who may call: :class:`~visiontrain.use.serve.app.Limits` and
:class:`~visiontrain.use.serve.guard.Access` (docs/use.md#serve has the table).

In tests and benchmarks, :func:`running_server` runs the same server in a thread on a free port.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from visiontrain.errors import VisiontrainError
from visiontrain.optional import require
from visiontrain.use.export.runtime import load_model
from visiontrain.use.serve.guard import TOKEN_ENV, is_ip
from visiontrain.use.tta import check_tta

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_app(model_path: str | Path, *, device: str = "auto", tta: str = "none", top_k: int = 5,
              token: str | None = None, allowed_hosts: tuple[str, ...] = (), cors: tuple[str, ...] = (),
              trust_code: bool = False, model_spec: str | None = None, **limits: Any) -> Any:
    """Load the model the operator named (never one a request names) and make the app.

    ``limits`` are :class:`~visiontrain.use.serve.app.Limits` fields; ``token``, ``allowed_hosts`` and ``cors``
    make its :class:`~visiontrain.use.serve.guard.Access`. Bad limits fail here, before the model is loaded.
    ``trust_code`` lets a ``.pt2`` load, which runs code from the file (see
    :func:`~visiontrain.use.export.runtime.load_exported`) and a checkpoint of your own model class, as
    ``model_spec`` does (see :func:`visiontrain.load`).
    """
    require("fastapi", "serve")  # app, guard and protocol import fastapi/uvicorn, an optional extra
    require("fastapi_offline", "serve")  # /docs without a CDN
    from visiontrain.use.serve.app import Limits, create_app
    from visiontrain.use.serve.guard import Access, check_token

    check_tta(tta)
    limit = Limits(**limits)
    if token is not None:
        try:
            check_token(token)
        except ValueError as exc:
            raise VisiontrainError(f"bad serve token: {exc}") from None
    access = Access(token, tuple(allowed_hosts), tuple(cors))
    # Requests run side by side in `threads` workers: one onnxruntime thread each keeps the cores from being
    # oversubscribed (see docs/benchmarks.md: on 2 cores, 4 clients went from 290 to 850 req/s).
    model = load_model(model_path, device=device, threads=1 if limit.threads > 1 else None, trust_code=trust_code,
                       model_spec=model_spec)
    return create_app(model, limit, tta=tta, top_k=top_k, access=access)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or a one-line error saying why not."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP,
        # and with Nagle on, every keep-alive response waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        raise VisiontrainError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port "
                               "or stop what uses it") from None
    return sock


def _uvicorn_server(app: Any, log_level: str) -> Any:
    """uvicorn on h11 with the app's read deadlines and connection cap; our own log lines in its format."""
    uvicorn = require("uvicorn", "serve")
    from visiontrain.use.serve.app import Limits
    from visiontrain.use.serve.protocol import protocol_class

    limits = getattr(app.state, "limits", None) or Limits()
    protocol = protocol_class(limits.header_timeout_s, limits.read_timeout_s, limits.max_connections)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["visiontrain.serve"] = {"handlers": ["default"], "level": log_level.upper(),
                                                  "propagate": False}
    # ws="none": no request may switch the connection to another protocol (and out of the deadlines).
    config = uvicorn.Config(app, http=protocol, ws="none", log_level=log_level, log_config=log_config,
                            access_log=log_level == "info", timeout_keep_alive=limits.keep_alive_s,
                            server_header=False)
    return uvicorn.Server(config)


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000, *, device: str = "auto",
          tta: str = "none", top_k: int = 5, log_level: str = "info", token: str | None = None,
          allowed_hosts: tuple[str, ...] = (), cors: tuple[str, ...] = (), trust_code: bool = False,
          model_spec: str | None = None, **limits: Any) -> None:
    """Serve until Ctrl-C. Binding beyond loopback without a ``token`` is allowed but warned about."""
    if not is_ip(host.strip("[]")):  # the name it was started with is one its clients use
        allowed_hosts = (*allowed_hosts, host)
    app = build_app(model_path, device=device, tta=tta, top_k=top_k, token=token, allowed_hosts=allowed_hosts,
                    cors=cors, trust_code=trust_code, model_spec=model_spec, **limits)
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    info = app.state.model_info if hasattr(app.state, "model_info") else {}
    name = info.get("name") or Path(model_path).name
    print(f"serving {name} ({len(info.get('classes', []))} classes) on http://{shown}:{actual} — page: /, "
          "API docs: /docs (Ctrl-C to stop)", flush=True)
    if host not in _LOOPBACK and token is None:
        print(f"visiontrain: warning: listening on {host} without a token: anyone who can reach it can use the "
              f"model; set {TOKEN_ENV} (or --token) or put it behind a proxy with auth", file=sys.stderr, flush=True)
    server = _uvicorn_server(app, log_level)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])


@contextlib.contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                   start_timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread; yields its base URL and stops it on exit.

    >>> import urllib.request
    >>> with running_server(build_app("runs/demo")) as url:
    ...     urllib.request.urlopen(url + "/health").read()
    b'{"status":"ok"}'
    """
    sock = bind(host, port)
    server = _uvicorn_server(app, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="visiontrain-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise VisiontrainError(f"the server did not start within {start_timeout:g} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
