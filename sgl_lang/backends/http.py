"""The `http://HOST:PORT` backend: programs run on a `sgl serve` runtime, with every capability
of `local` (constraints, scoring for `select`, prefix hints, token healing).

The native API (see `sgl_lang.server.native`) speaks SGLang's `/generate` format and extends it
with a structured `prompt` (the program's segments and open role, so the server renders it
with the model's chat template and heals tokens exactly as `local` does) and with the
`sampling_params` fields `heal` and `choices`: the wire format of `sgl_lang.protocol.wire`,
which this client writes and the server reads.

Many `sgl run` processes pointed at one server share its engine and its prefix cache. A key
set with `SGL_API_KEY` is sent as a bearer token, only to a server the user chose
(`--backend`), never to one a program wrote.

Images (free or inside messages) go on the wire as parts: URLs as they are, local files as
their bytes (the server cannot read the client's files). `sgl serve`'s local model cannot see
images, so the capabilities say none; a server whose model can would answer them.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import httpx

from sgl_lang.backends.chat import image_data, is_url
from sgl_lang.protocol import (
    GEN_OPTIONS,
    SELECT_METHODS,
    Backend,
    BackendError,
    Capabilities,
    GenRequest,
    GenResult,
    Image,
    Message,
    Prompt,
    Segment,
)
from sgl_lang.protocol.wire import prompt_to_json, request_to_json, result_from_json

API_KEY_ENV = "SGL_API_KEY"
TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=600.0)
NUM_CONNECT_RETRIES = 3  # a server that is still starting: 0.5 s, 1 s, 2 s
RETRY_STATUSES = frozenset({429, 502, 503, 504})


# what the wire's `sampling_params` carry (protocol/wire.py): what the server's engine enforces
WIRE_CONSTRAINTS = frozenset({"regex", "json", "choices", "grammar"})


def create(target: str, *, user_chosen: bool = True) -> HttpBackend:
    """`http://HOST:PORT` or `https://...` (the whole URI is the target); $SGL_API_KEY is
    sent only when the user chose it (`user_chosen`)."""
    return HttpBackend(target, api_key=os.environ.get(API_KEY_ENV) if user_chosen else None)


class HttpBackend(Backend):
    """Generation, scoring and prefix hints on a remote `sgl serve`. Creating one opens no
    connection; an `httpx.AsyncClient` is opened on first use (one per event loop)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = url
        self.url = url.rstrip("/")
        self.capabilities = Capabilities(
            WIRE_CONSTRAINTS,
            frozenset(SELECT_METHODS),
            images=False,
            tools=True,
            gen_options=GEN_OPTIONS,
        )
        self._api_key = api_key  # sent as a bearer token
        self._transport = transport  # tests: an ASGI transport to an in-process server
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        request = replace(request, prompt=_inline_images(request.prompt))
        body = {**request_to_json(request), "stream": True}
        text = ""
        async for event in self._events("/generate", body):
            if "error" in event:
                raise BackendError(f"{self.url}: {_message(event['error'])}")
            piece = event["text"][len(text) :]
            text = event["text"]
            if piece and on_chunk is not None:
                on_chunk(piece)
            if event.get("meta_info", {}).get("finish_reason") is not None:
                try:
                    return result_from_json(event)
                except ValueError as exc:
                    raise BackendError(f"{self.url}: {exc}") from None
        raise BackendError(f"{self.url}: the stream ended without a result")

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        body = {"prompt": prompt_to_json(prompt), "choices": list(choices), "method": method}
        return [float(s) for s in (await self._post("/score", body))["scores"]]

    async def cache_prefix(self, prompt: Prompt) -> None:
        await self._post("/cache_prefix", {"prompt": prompt_to_json(prompt)})

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            if self._loop is asyncio.get_running_loop():
                await client.aclose()

    # -- HTTP ----------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # a client is bound to its loop
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = httpx.AsyncClient(
                base_url=self.url, timeout=TIMEOUT, headers=headers, transport=self._transport
            )
            self._loop = loop
        return self._client

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._send(path, body, stream=False)
        try:
            return dict(response.json())
        except ValueError:
            raise BackendError(f"{self.url}{path}: the answer is not JSON") from None

    async def _events(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The server-sent events of a streamed request, as dicts, until `[DONE]`."""
        response = await self._send(path, body, stream=True)
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                yield json.loads(data)
        except httpx.HTTPError as exc:
            raise BackendError(f"{self.url}{path}: the stream broke off ({exc})") from None
        finally:
            await response.aclose()

    async def _send(self, path: str, body: dict[str, Any], *, stream: bool) -> httpx.Response:
        """POST with retries on connection failures and overload; HTTP errors become
        `BackendError`s naming the status and the server's message."""
        client = self._http()
        for attempt in range(NUM_CONNECT_RETRIES + 1):
            last = attempt == NUM_CONNECT_RETRIES
            try:
                request = client.build_request("POST", path, json=body)
                response = await client.send(request, stream=stream)
            except httpx.ConnectError as exc:
                if last:
                    raise BackendError(
                        f"cannot reach the sgl server at {self.url}: {exc}"
                    ) from None
            except httpx.HTTPError as exc:
                raise BackendError(f"{self.url}{path}: {type(exc).__name__}: {exc}") from None
            else:
                if response.status_code < 400:
                    return response
                if last or response.status_code not in RETRY_STATUSES:
                    await response.aread()
                    raise BackendError(
                        f"{self.url}{path} answered {response.status_code}: {_error_text(response)}"
                    )
                await response.aclose()
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


def _error_text(response: httpx.Response) -> str:
    try:
        return _message(response.json())
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase


def _message(error: Any) -> str:
    """The message of an error body: `{"error": {"message": ...}}`, `{"detail": ...}`, ..."""
    if isinstance(error, dict):
        for key in ("error", "message", "detail"):
            if key in error:
                return _message(error[key])
    return str(error)


def _inline_images(prompt: Prompt) -> Prompt:
    """`prompt` with each image from a local file replaced by the file's bytes."""

    def inline(image: Image) -> Image:
        return (
            image
            if is_url(image) or isinstance(image.source, bytes)
            else Image(image_data(image)[0])
        )

    def segment(item: Segment) -> Segment:
        if isinstance(item, Image):
            return inline(item)
        if isinstance(item, Message) and item.images:
            parts = [inline(p) if isinstance(p, Image) else p for p in item.content]
            return Message(item.role, parts)
        return item

    return replace(prompt, segments=tuple(segment(item) for item in prompt.segments))
