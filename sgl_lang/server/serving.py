"""What `sgl serve`'s routes share: the served model, streamed generation, disconnects, SSE,
error bodies.

The server does not reimplement prompt rendering, token healing or scoring: it drives the
bridge (`sgl_lang.bridge`) on its one engine, as the `local` backend does, so a program gets
the same results from `http://` as from `local`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import HTTPException
from starlette.requests import Request

from sgl_lang.bridge.engine import BridgedEngine
from sgl_lang.bridge.options import EngineOptions
from sgl_lang.bridge.registry import shared_engine
from sgl_lang.protocol import BackendError, Choices, GenRequest, GenResult, Regex
from sgl_lang.protocol.checks import constraint_problem
from sgl_lang.runtime.engine import Engine

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is there


class ServedModel:
    """The engine behind the server, and the bridge every route drives it through."""

    def __init__(self, bridged: BridgedEngine, name: str) -> None:
        self.name = name
        self.bridged = bridged
        self.engine: Engine = bridged.engine
        self.context_len: int = self.engine.scheduler.max_context_len
        self.vocab_size: int = self.engine.model_config.vocab_size

    @classmethod
    def load(
        cls,
        model_path: Path | None,
        name: str | None = None,
        options: EngineOptions | None = None,
    ) -> ServedModel:
        """The process's shared engine for `model_path` (None: the embedded SmolLM2) with
        `options` (threads, KV budget, policy, cache, max running)."""
        default = "smollm2-135m-instruct" if model_path is None else model_path.stem
        return cls(shared_engine(model_path, options), name or default)

    @classmethod
    def of_engine(cls, engine: Engine, name: str = "test-model") -> ServedModel:
        """Serve an engine built by the caller (tests); the caller closes it."""
        return cls(BridgedEngine(engine), name)


async def stream_generate(
    generate: Callable[[Callable[[str], None]], Awaitable[GenResult]],
    request: GenRequest | None = None,
) -> AsyncIterator[str | GenResult]:
    """The text pieces of `generate(on_chunk)` as they come, then its `GenResult`. Errors are
    raised from the iteration; leaving it early (a client that went away) cancels the
    generation, which frees its KV slots. The result is checked against `request`'s
    constraint (`unsatisfiable`)."""
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.ensure_future(generate(pieces.put_nowait))
    task.add_done_callback(lambda _: pieces.put_nowait(None))
    try:
        while (piece := await pieces.get()) is not None:
            yield piece
        yield unsatisfiable(task.result(), request)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def unsatisfiable(result: GenResult, request: GenRequest | None) -> GenResult:
    """`result`, unless the grammar engine ended a regex- or choices-constrained output (not
    cut by its length or a stop string) with text the constraint does not accept: it found no
    way to complete the output (a regex that accepts no string, or none from where the output
    went, choices the tokenizer cannot spell; a 400)."""
    constraint = None if request is None else request.constraint
    if not isinstance(constraint, Regex | Choices) or result.finish_reason == "length":
        return result
    if request is not None and request.stop and result.finish_reason == "stop":
        return result
    if (problem := constraint_problem(constraint, result.text)) is not None:
        raise HTTPException(400, f"no output can satisfy the constraint: {problem}")
    return result


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


def error_body(message: str, status: int, kind: str = "invalid_request_error") -> dict[str, Any]:
    """Every error's JSON body (OpenAI's shape)."""
    return {"error": {"message": message, "type": kind, "code": status}}


def error_message(exc: Exception) -> str:
    """What a client is told of `exc`."""
    if isinstance(exc, BackendError):
        return exc.message
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    return str(exc) or type(exc).__name__


def sse(data: Any) -> str:
    """One server-sent event carrying `data` as JSON (or a literal string such as [DONE])."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def sse_stream(events: AsyncIterator[Any]) -> AsyncIterator[str]:
    """SSE lines for `events`, then `[DONE]`; an error mid-stream becomes one error event
    (a 400 body) before `[DONE]`, since the status line has already been sent."""
    try:
        async for event in events:
            yield sse(event)
    except Exception as exc:
        yield sse(error_body(error_message(exc), 400))
    yield sse("[DONE]")
