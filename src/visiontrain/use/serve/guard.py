"""Who may use the service: the Host header, the page's origin, and an optional bearer token (ASGI middleware).

- Host: a request must name the server by an IP address, ``localhost``, or a name the operator allowed
  (``--allowed-host``). A page on a domain the attacker controls that re-points its DNS at this server
  (DNS rebinding, the attack that turns a browser into a client of a service on 127.0.0.1 or the LAN) sends
  its own domain as the Host, so it is refused (400) before anything runs.
- Origin: a browser marks cross-origin requests with ``Origin``. A POST from a page that is not this server's
  own (the page at ``/``) is refused (403) unless its origin was allowed with ``--cors``; a form on any web
  page could otherwise make a visitor's browser post images here.
- Token: with ``--token`` (or ``VISIONTRAIN_SERVE_TOKEN``), every path but the page, ``/health`` and the API
  docs needs ``Authorization: Bearer TOKEN`` (401 otherwise), compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

TOKEN_ENV = "VISIONTRAIN_SERVE_TOKEN"  # read by `visiontrain serve` when --token is not given
OPEN_PATHS = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DOCS_STATIC = "/docs/static"  # Swagger UI's and ReDoc's own files, served locally (open like /docs)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Access:
    """Who may use the service: ``token`` (None: no token needed), extra Host names, origins allowed by CORS."""

    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # names besides IP addresses and localhost; "*" allows any
    cors: tuple[str, ...] = ()  # origins such as "https://app.example.com"; "*" allows any


class Guard:
    """ASGI middleware applying :class:`Access` to every HTTP request before the app sees it."""

    def __init__(self, app: Any, access: Access) -> None:
        self.app, self.access = app, access
        self.hosts = {h.lower().rstrip(".") for h in access.allowed_hosts} | {"localhost"}
        self.origins = {o.lower().rstrip("/") for o in access.cors}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for key, value in scope.get("headers") or []:
            headers.setdefault(key, value)  # the first of a repeated header, as Starlette reads it
        refusal = self._host(headers) or self._origin(scope, headers) or self._token(scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, extra = refusal
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), *extra]})
        await send({"type": "http.response.body", "body": body})

    def _host(self, headers: dict[bytes, bytes]) -> tuple[int, str, list] | None:
        raw = headers.get(b"host")
        if raw is None or "*" in self.hosts:  # HTTP/1.0 clients may send none; browsers always do
            return None
        name = host_name(raw.decode("latin-1"))
        if name in self.hosts or is_ip(name):
            return None
        shown = name.encode("unicode_escape").decode("ascii")[:100]
        return 400, (f"Host {shown!r} is not allowed (DNS-rebinding defence); use the server's IP address or "
                     f"localhost, or start it with --allowed-host {shown}"), []

    def _origin(self, scope: dict, headers: dict[bytes, bytes]) -> tuple[int, str, list] | None:
        raw = headers.get(b"origin")
        if raw is None or scope["method"] in _SAFE_METHODS:
            return None
        origin = raw.decode("latin-1").strip().lower().rstrip("/")
        if "*" in self.origins or origin in self.origins:
            return None
        parts = urlsplit(origin)
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if parts.scheme in ("http", "https") and parts.netloc == host:  # the page at / posting to its own server
            return None
        shown = origin.encode("unicode_escape").decode("ascii")[:100]
        return 403, (f"cross-origin request from {shown} refused; start the server with --cors {shown} to allow "
                     "that page"), []

    def _token(self, scope: dict, headers: dict[bytes, bytes]) -> tuple[int, str, list] | None:
        if self.access.token is None or scope["path"] in OPEN_PATHS or scope["path"].startswith(DOCS_STATIC + "/"):
            return None
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            return None  # a CORS preflight carries no credentials; CORS middleware answers it
        scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"),
                                                              self.access.token.encode("latin-1")):
            return None
        return 401, ("this server needs a token: send the header 'Authorization: Bearer TOKEN' (missing or wrong "
                     "token)"), [(b"www-authenticate", b"Bearer")]


def host_name(value: str) -> str:
    """The name part of a Host header value, lowercased: ``[::1]:8000`` -> ``::1``, ``Example.com.:80`` ->
    ``example.com``."""
    text = value.strip().lower()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return text.rstrip(".")


def is_ip(name: str) -> bool:
    """Whether ``name`` is an IPv4 or IPv6 address (a Host naming an address cannot be a rebound domain)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_token(token: str) -> str:
    """The token if it can travel in a header: visible ASCII, no spaces; else a ValueError saying why."""
    if not token:
        raise ValueError("the token is empty")
    if not all(33 <= ord(ch) <= 126 for ch in token):
        raise ValueError("the token must be visible ASCII characters without spaces")
    return token
