"""The envelope (ASGI middleware): a `/v1/completions` request that carries a native request
in its `sgl` field (`{"path", "body"}`, see docs/server.md) is answered by that native route, as
if it had been sent there; SGLang's router passes such requests on with the field kept."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sgl_lang.protocol.wire import ENVELOPE_KEY, ENVELOPE_PATHS, ENVELOPE_ROUTE
from sgl_lang.server.guard import replay_messages
from sgl_lang.server.serving import error_body


class Envelope:
    """Opens the envelope of a POST to `/v1/completions`: the method, the path and the body the
    app sees become the native request's. Runs after the guard, which has checked the key and
    the size of the whole request; any other request passes unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != ENVELOPE_ROUTE or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        raw, receive = await _read_body(receive)
        inner = _inner_request(raw)
        if inner is None:
            await self.app(scope, receive, send)
        elif isinstance(inner, str):
            await JSONResponse(error_body(inner, 400), 400)(scope, receive, send)
        else:
            path, body = inner
            await self.app(_native_scope(scope, path, body), _replay(body, receive), send)


def _inner_request(raw: bytes) -> tuple[str, bytes] | str | None:
    """The native path and body of an enveloped request; None for a plain `/v1/completions`
    request; a message when the envelope is malformed."""
    try:
        outer = json.loads(raw)
    except ValueError:
        return None  # the route answers with its own 400
    if not isinstance(outer, dict) or ENVELOPE_KEY not in outer:
        return None
    inner: Any = outer[ENVELOPE_KEY]
    paths = ", ".join(sorted(ENVELOPE_PATHS))
    if not isinstance(inner, dict) or inner.get("path") not in ENVELOPE_PATHS:
        return f'`{ENVELOPE_KEY}` must be {{"path", "body"}} with a path among {paths}'
    if not isinstance(inner.get("body"), dict):
        return f"`{ENVELOPE_KEY}.body` must be a JSON object"
    return inner["path"], json.dumps(inner["body"]).encode()


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The request's whole body, and a `receive` that replays it (then the client's messages)."""
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), replay_messages([message], receive)
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    raw = b"".join(chunks)
    return raw, _replay(raw, receive)


def _replay(body: bytes, receive: Receive) -> Receive:
    return replay_messages([{"type": "http.request", "body": body, "more_body": False}], receive)


def _native_scope(scope: Scope, path: str, body: bytes) -> Scope:
    """`scope` sent to `path` with its method, and the Content-Length of `body`."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    method = ENVELOPE_PATHS[path]
    return {**scope, "method": method, "path": path, "raw_path": path.encode(), "headers": headers}
