"""A fake HTTP API on 127.0.0.1 for the API backends' tests: records each request and answers
from a queue of canned replies, so the official SDKs run unchanged against it (no network)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

from sgl_lang.grammar import parse_text
from sgl_lang.interpreter import Interpreter
from sgl_lang.protocol import Backend
from sgl_lang.state import State
from sgl_lang.stdlib import permissions


class Recorded(NamedTuple):
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: Any  # parsed JSON (None when empty)


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str = "application/json"


def sse_reply(events: list[tuple[str | None, Any]]) -> Reply:
    """Server-sent events: (event name or None, JSON data) each."""
    lines = []
    for name, data in events:
        head = f"event: {name}\n" if name else ""
        lines.append(f"{head}data: {json.dumps(data)}\n\n")
    return Reply(200, "".join(lines).encode(), "text/event-stream")


def json_reply(status: int, data: Any) -> Reply:
    return Reply(status, json.dumps(data).encode())


class FakeAPI:
    """`with FakeAPI(reply, ...) as api:` serves on `api.url`; `api.requests` are recorded.
    Replies go out in the order requests arrive, or, with `reply_for` set, by request body (for
    requests sent concurrently)."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.reply_for: Callable[[Any], Reply] | None = None
        self.requests: list[Recorded] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.do_POST()

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(size)
                body = json.loads(raw) if raw else None
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake.requests.append(Recorded(self.command, self.path, headers, body))
                reply = fake.next_reply(body)
                self.send_response(reply.status)
                self.send_header("content-type", reply.content_type)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def next_reply(self, body: Any) -> Reply:
        if self.reply_for is not None:
            return self.reply_for(body)
        return self.replies.pop(0) if self.replies else json_reply(500, {"error": "none"})

    def __enter__(self) -> FakeAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
IMAGE_PROGRAM = """\
user:
    "What is in this picture? "
    image "{path}"
assistant gen answer(max_tokens=5)
"""
TOOL_PROGRAM = """\
# Add two numbers.
def add(a, b):
    return a + b

user "What is 2 + 3?"
assistant gen answer(tools=[add], max_tokens=20)
"""
ADD_PARAMETERS = {
    "type": "object",
    "properties": {name: {"type": ["string", "number", "boolean"]} for name in ("a", "b")},
    "required": ["a", "b"],
    "additionalProperties": False,
}


def run_program(backend: Backend, source: str) -> State:
    """Run `source` on `backend` (reads allowed), then close the backend."""
    program = parse_text(source, "program.sgl")

    async def run() -> State:
        try:
            return await Interpreter(backend).run_program(program)
        finally:
            await backend.close()

    token = permissions.current.set(permissions.Permissions(read=True))
    try:
        return asyncio.run(run())
    finally:
        permissions.current.reset(token)


def run_image_program(backend: Backend, folder: Path) -> State:
    """Run `IMAGE_PROGRAM` (a PNG file inside a `user:` block) on `backend`."""
    picture = folder / "cat.png"
    picture.write_bytes(PNG)
    return run_program(backend, IMAGE_PROGRAM.format(path=picture))
