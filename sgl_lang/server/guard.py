"""The server's front door (ASGI middleware): the `Host` allow-list, the API key and the
request-size limit, checked before any route runs; a refusal is the documented JSON error."""

from __future__ import annotations

import hmac
from collections.abc import Collection
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sgl_lang.server.serving import error_body

MAX_BODY_BYTES = 8 * 1024 * 1024  # 8 MiB: ~2M tokens of text, far above any model's context
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
LOOPBACK_BINDS = frozenset({"localhost", "127.0.0.1", "::1"})
OPEN_PATHS = frozenset({"/health"})


def default_allowed_hosts(bind: str, extra: Collection[str] = ()) -> frozenset[str] | None:
    """The `Host` names a server bound to `bind` answers: on a loopback address only the
    loopback names (and `extra`), so a web page whose domain is rebound to 127.0.0.1 cannot
    reach it; elsewhere any name (None) unless `extra` names some."""
    names = frozenset(name.lower() for name in extra)
    if bind.lower() in LOOPBACK_BINDS:
        return LOOPBACK_HOSTS | names
    return names or None


def host_name(header: str) -> str:
    """The name of a `Host` header without its port (`[::1]:30000` -> `[::1]`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass(frozen=True)
class GuardConfig:
    api_key: str | None = None
    allowed_hosts: frozenset[str] | None = None  # None: any Host
    max_body_bytes: int = MAX_BODY_BYTES


class Guard:
    """Refuses, before the app sees it, a request whose `Host` is not allowed (400), that
    lacks the key on any path but /health (401; compared in constant time), or whose body is
    larger than `max_body_bytes` (413; by its Content-Length, else as it arrives)."""

    def __init__(self, app: ASGIApp, config: GuardConfig) -> None:
        self.app, self.config = app, config
        self.key = None if config.api_key is None else config.api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope["path"], headers)
        if refusal is None:
            refusal, receive = await self._read_body(headers, receive)
        if refusal is not None:
            message, status = refusal
            await JSONResponse(error_body(message, status), status)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, path: str, headers: dict[str, str]) -> tuple[str, int] | None:
        allowed = self.config.allowed_hosts
        if allowed is not None and host_name(headers.get("host", "")) not in allowed:
            return "the Host header names a host this server does not answer", 400
        if self.key is not None and path not in OPEN_PATHS:
            given = headers.get("x-api-key") or headers.get("authorization", "")
            if not hmac.compare_digest(given.removeprefix("Bearer ").strip().encode(), self.key):
                return "missing or wrong API key", 401
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.config.max_body_bytes:
            return self._too_large(), 413
        return None

    async def _read_body(
        self, headers: dict[str, str], receive: Receive
    ) -> tuple[tuple[str, int] | None, Receive]:
        """The whole body read up to the limit, and a `receive` that replays it to the app
        (then passes on the client's later messages, such as a disconnect)."""
        if not headers.get("content-length", "").isdigit() and "transfer-encoding" not in headers:
            return None, receive
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None, replay_messages([message], receive)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.config.max_body_bytes:
                return (self._too_large(), 413), receive
            more = message.get("more_body", False)
        body: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return None, replay_messages([body], receive)

    def _too_large(self) -> str:
        limit = self.config.max_body_bytes
        return f"the request body is larger than the server's limit ({limit} bytes)"


def replay_messages(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives `messages`, then the client's own."""

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay
