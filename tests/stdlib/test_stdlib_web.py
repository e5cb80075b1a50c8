"""The `web` module against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from sgl_lang.errors import SglPermissionError, SglTypeError, SglValueError
from sgl_lang.stdlib import permissions
from sgl_lang.stdlib.permissions import Permissions
from sgl_lang.stdlib.web import get


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/page")
            self.end_headers()
            return
        status, body = (200, "héllo web") if self.path == "/page" else (404, "nope")
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def allowed() -> Iterator[None]:
    token = permissions.current.set(Permissions(net=True))
    yield
    permissions.current.reset(token)


def test_denied_without_allow_net(server: str) -> None:
    with pytest.raises(SglPermissionError) as info:
        asyncio.run(get(f"{server}/page"))
    assert info.value.message == "network access needs --allow-net"


@pytest.mark.usefixtures("allowed")
def test_get_returns_the_body_text_following_redirects(server: str) -> None:
    assert asyncio.run(get(f"{server}/page")) == "héllo web"
    assert asyncio.run(get(f"{server}/redirect")) == "héllo web"


@pytest.mark.usefixtures("allowed")
def test_http_errors_are_value_errors(server: str) -> None:
    with pytest.raises(SglValueError) as info:
        asyncio.run(get(f"{server}/missing"))
    assert info.value.message == f"web.get(): {server}/missing answered HTTP 404 Not Found"


@pytest.mark.usefixtures("allowed")
def test_unreachable_host_is_a_value_error(server: str) -> None:
    closed = server.rsplit(":", 1)[0] + ":1"  # port 1: nothing listens there
    with pytest.raises(SglValueError, match=r"web\.get\(\): cannot fetch"):
        asyncio.run(get(closed))


@pytest.mark.usefixtures("allowed")
def test_timeout_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow(*args: Any, **kwargs: Any) -> Any:
        raise httpx.ReadTimeout("timed out")

    monkeypatch.setattr(httpx.AsyncClient, "get", slow)
    with pytest.raises(SglValueError) as info:
        asyncio.run(get("http://127.0.0.1:9/", timeout=2))
    assert info.value.message == "web.get(): http://127.0.0.1:9/ did not answer within 2 s"


@pytest.mark.usefixtures("allowed")
def test_bad_arguments() -> None:
    with pytest.raises(SglValueError, match="needs an http:// or https:// URL"):
        asyncio.run(get("file:///etc/passwd"))
    with pytest.raises(SglTypeError, match="url must be a str"):
        asyncio.run(get(3))  # type: ignore[arg-type]
    with pytest.raises(SglTypeError, match="timeout must be a positive number"):
        asyncio.run(get("http://127.0.0.1/", timeout=0))
