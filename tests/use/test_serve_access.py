"""Who may use the prediction service, through a real uvicorn server on 127.0.0.1: the bearer token, the Host
check (DNS rebinding), cross-origin POSTs and --cors; and the serve flags' bounds (one line, exit 2, before
anything is loaded)."""

from __future__ import annotations

import io
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from visiontrain.data.synthetic import SHAPES, make_shapes
from visiontrain.use.serve import build_app, running_server
from visiontrain.use.serve.client import call

TOKEN = "s3cret-Token_for.tests"
APP_ORIGIN = "https://app.example"


def _png() -> tuple[bytes, str]:
    images, labels = make_shapes(1, 32, 3, seed=77)
    buf = io.BytesIO()
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue(), SHAPES[int(labels[0])]


PNG, TRUTH = _png()


def predict(url: str, **headers: str) -> tuple[int, Any, dict[str, str]]:
    return call(url, "POST", "/predict", PNG, {"Content-Type": "image/png", **headers})


@pytest.fixture(scope="module")
def guarded(synthetic_run) -> str:
    app = build_app(synthetic_run.dir, token=TOKEN, allowed_hosts=("serve.example",), cors=(APP_ORIGIN,))
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def plain(synthetic_run) -> str:
    with running_server(build_app(synthetic_run.dir)) as url:
        yield url


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_token_is_required_and_checked(guarded: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        status, out, got = predict(guarded, **headers)
        assert status == 401 and "Authorization: Bearer" in out["error"], (headers, out)
        assert got["www-authenticate"] == "Bearer"
    assert call(guarded, path="/model")[0] == 401
    status, out, _ = predict(guarded, **BEARER)
    assert status == 200 and out["top"]["label"] == TRUTH
    assert call(guarded, path="/model", headers=BEARER)[0] == 200
    # The page, liveness and the API docs stay open: they hold nothing but the page's code and the API's shape.
    assert [call(guarded, path=p)[0] for p in ("/", "/health", "/openapi.json")] == [200, 200, 200]


@pytest.mark.parametrize("host, allowed", [
    ("evil.example", False), ("evil.example:8000", False), ("127.0.0.1.evil.example", False),
    ("serve.example", True), ("SERVE.example.:80", True), ("localhost:8000", True), ("127.0.0.1", True),
    ("[::1]:8000", True), ("10.1.2.3:8000", True),
])
def test_host_header_must_name_the_server(guarded: str, plain: str, host: str, allowed: bool) -> None:
    status, out, _ = predict(guarded, Host=host, **BEARER)
    assert (status == 200) == allowed, (host, status, out)
    if not allowed:
        assert status == 400 and "--allowed-host" in out["error"]
        # A rebound name is refused on a plain loopback server too: that is where DNS rebinding strikes.
        assert predict(plain, Host=host)[0] == 400


def test_cross_origin_posts_are_refused_unless_allowed(guarded: str, plain: str) -> None:
    port = urlsplit(plain).port
    status, out, _ = predict(plain, Origin="https://evil.example")
    assert status == 403 and "--cors https://evil.example" in out["error"]
    assert predict(plain, Origin=APP_ORIGIN)[0] == 403  # allowed on the other server only
    assert predict(plain, Origin=f"http://127.0.0.1:{port}")[0] == 200  # the page at / posting to its server
    assert predict(plain, Origin="null")[0] == 403
    status, _, headers = predict(guarded, Origin=APP_ORIGIN, **BEARER)
    assert status == 200 and headers["access-control-allow-origin"] == APP_ORIGIN
    assert predict(guarded, Origin="https://evil.example", **BEARER)[0] == 403
    # The browser's preflight for a page sending the token: answered without the token.
    status, _, headers = call(guarded, "OPTIONS", "/predict", headers={
        "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 200 and headers["access-control-allow-origin"] == APP_ORIGIN
    assert "authorization" in headers["access-control-allow-headers"].lower()


@pytest.mark.parametrize("flags, fragment", [
    (["--port", "70000"], "--port: expected an integer from 0 to 65,535"), (["--port", "-1"], "--port: expected"),
    (["--threads", "0"], "--threads: expected an integer from 1"), (["--timeout", "0"], "--timeout: expected"),
    (["--timeout", "nan"], "--timeout: expected"), (["--max-mb", "-1"], "--max-mb: expected a number above 0"),
    (["--max-mb", "0"], "--max-mb: expected"), (["--max-pixels", "0"], "--max-pixels: expected"),
    (["--top-k", "0"], "--top-k: expected"), (["--queue", "-1"], "--queue: expected"),
    (["--read-timeout", "0"], "--read-timeout: expected"), (["--max-connections", "0"], "--max-connections: expected"),
    (["--token", ""], "token is empty"), (["--token", "two words"], "token must be visible ASCII"),
])
def test_bad_serve_flags_are_one_line_before_loading(main_cli, one_line_error, tmp_path, flags, fragment) -> None:
    # The model does not exist: an error about the flag shows that nothing was loaded (or bound) first.
    result = main_cli("serve", tmp_path / "no-such-run", *flags)
    one_line_error(result, fragment)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_load_everything_from_this_server_without_a_token(guarded: str, page: str) -> None:
    """Swagger UI and ReDoc come from the server, not a CDN: offline, every file the page names is here."""
    status, html, _ = call(guarded, path=page)
    assert status == 200
    named = re.findall(r'(?:src|href|spec-url)="([^"]+)"|url: \'([^\']+)\'', html)
    urls = [a or b for a, b in named]
    assert "/openapi.json" in urls and any(u.endswith(".js") for u in urls)
    assert not [u for u in urls if not u.startswith("/") or u.startswith("//")], urls  # no other host
    for url in urls:
        status, body, _ = call(guarded, path=url)
        assert status == 200 and body, url
