"""What `sgl serve`'s endpoints share: the served model, streamed generation, disconnects, SSE.

The server does not reimplement prompt rendering, token healing or scoring: it drives the
`local` backend (`sgl_lang.backends.local`) bound to the server's one engine, so a program
gets the same results from `http://` as from `local`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from starlette.requests import Request

from sgl_lang.backends.local import LocalBackend, _SharedEngine, shared_engine
from sgl_lang.protocol import GenRequest, GenResult
from sgl_lang.runtime.engine import Engine

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is there


class ServedModel:
    """The engine behind the server, and a `local` backend bound to it."""

    def __init__(self, shared: _SharedEngine, name: str) -> None:
        self.name = name
        self.engine: Engine = shared.engine
        self.backend = _BoundBackend(shared, name)

    @classmethod
    def load(cls, model_path: Path | None, name: str | None = None) -> ServedModel:
        """The process's shared engine for `model_path` (None: the embedded SmolLM2)."""
        key = None if model_path is None else str(model_path.resolve())
        default = "smollm2-135m-instruct" if model_path is None else model_path.stem
        return cls(shared_engine(model_path, key), name or default)

    @classmethod
    def of_engine(cls, engine: Engine, name: str = "test-model") -> ServedModel:
        """Serve an engine built by the caller (tests); the caller closes it."""
        return cls(_SharedEngine(engine), name)


class _BoundBackend(LocalBackend):
    """The `local` backend on a given engine instead of the per-model registry's."""

    def __init__(self, shared: _SharedEngine, name: str) -> None:
        super().__init__()
        self.name = name
        self._bound = shared

    async def _shared(self) -> _SharedEngine:
        return self._bound


async def stream_generate(
    backend: LocalBackend, request: GenRequest
) -> AsyncIterator[str | GenResult]:
    """The text pieces of a generation as they come, then its `GenResult`. Errors are raised
    from the iteration; leaving it early (a client that went away) cancels the request, which
    frees its KV slots."""
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.create_task(backend.generate(request, pieces.put_nowait))
    task.add_done_callback(lambda _: pieces.put_nowait(None))
    try:
        while (piece := await pieces.get()) is not None:
            yield piece
        yield task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (raises ClientGone)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def sse(data: Any) -> str:
    """One server-sent event carrying `data` as JSON (or a literal string such as [DONE])."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def sse_stream(
    events: AsyncIterator[Any], on_error: Callable[[Exception], Any]
) -> AsyncIterator[str]:
    """SSE lines for `events`, then `[DONE]`; an error mid-stream becomes one event
    (`on_error(exc)`) before `[DONE]`, since the status line has already been sent."""
    try:
        async for event in events:
            yield sse(event)
    except Exception as exc:
        yield sse(on_error(exc))
    yield sse("[DONE]")
