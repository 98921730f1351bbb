"""uvicorn's HTTP/1.1 protocol (h11) with the deadlines and the connection cap it lacks.

uvicorn times out only the idle time *between* requests (``timeout_keep_alive``, armed after a response):
a connection that opens and then trickles its request line, headers or body a byte at a time is held
forever (slowloris), and ASGI middleware cannot help because the app is called only once the headers are
complete. Here each connection must deliver a request's headers within ``header_timeout`` seconds (counted
from the connection, or from the previous response) and its body within ``read_timeout`` seconds after the
headers; else it gets a 408 (when it had started a request) and is closed. Past ``max_connections`` open
connections, a new one is answered 503 (with ``Retry-After``) and closed, instead of waiting in line.

This module imports uvicorn: import it only after :func:`visiontrain.optional.require` said it is there.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from visiontrain.use.serve.app import TIMED_OUT

log = logging.getLogger("visiontrain.serve")


async def busy(scope: dict, receive: Any, send: Any) -> None:
    """The answer to a request on a connection over the cap."""
    body = json.dumps({"error": "too many open connections; try again in a few seconds"}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"2"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


_TIMEOUT_BODY = b'{"error":"the request did not arrive in time"}'
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: "
                     + str(len(_TIMEOUT_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _TIMEOUT_BODY)


class DeadlineProtocol(H11Protocol):
    """:class:`H11Protocol` plus the read deadlines and the connection cap (set by :func:`protocol_class`)."""

    header_timeout: float = 10.0
    read_timeout: float = 30.0
    max_connections: int = 128

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: Any = None
        self._over_cap = len(self.connections) > self.max_connections  # this connection is counted already
        if self._over_cap:
            self.app = busy
        self._arm(h11.IDLE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def _follow(self) -> None:
        """Keep the deadline that matches what the client is sending now: headers, a body, or nothing."""
        state = self.conn.their_state
        if state is h11.IDLE or state is h11.SEND_BODY:
            if self._phase is not state:
                self._arm(state)
        else:  # the request is in (the app's own timeout runs now), or the connection is closing
            self._disarm()

    def _arm(self, phase: Any) -> None:
        self._disarm()
        seconds = self.read_timeout if phase is h11.SEND_BODY else self.header_timeout
        if self._over_cap:  # it holds a socket the server has none to spare for
            seconds = min(seconds, 1.0)
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expired(self, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY:
            what, answer = "body", not self.cycle.response_started
            if not self.cycle.response_complete:
                self.scope[TIMED_OUT] = True  # the app sees a disconnect: it should not report it again
        elif self.conn.trailing_data[0]:
            what, answer = "headers", True
        else:  # an idle connection that never started a request: close it quietly, like keep-alive does
            what, answer = "", False
        if what:
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.warning("closed the connection from %s: its request %s did not arrive within %g s",
                        client, what, seconds)
        if answer:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def protocol_class(header_timeout: float, read_timeout: float, max_connections: int) -> type[DeadlineProtocol]:
    """A :class:`DeadlineProtocol` with these limits, to pass to ``uvicorn.Config(http=...)``."""
    return type("DeadlineProtocol", (DeadlineProtocol,), {
        "header_timeout": header_timeout, "read_timeout": read_timeout, "max_connections": max_connections})
