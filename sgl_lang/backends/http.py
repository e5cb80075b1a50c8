"""The `http://HOST:PORT` backend: programs run on a `sgl serve` runtime, with every capability
of `local` (constraints, scoring for `select`, prefix hints, token healing).

The native API (see `sgl_lang.server.native`) speaks SGLang's `/generate` format and extends it
with a structured `prompt` (the program's segments and open role, so the server renders it
with the model's chat template and heals tokens exactly as `local` does) and with the
`sampling_params` fields `heal` and `choices`: the wire format of `sgl_lang.protocol.wire`,
which this client writes and the server reads.

Many `sgl run` processes pointed at one server share its engine and its prefix cache. Pointed
at SGLang's router over `sgl serve` workers (`sgl serve --replicas N`, docs/scale.md), the
backend notices on first use and sends each native request inside a `/v1/completions` request
(the envelope, docs/server.md), which the router passes on unchanged to the worker its
cache-aware policy picks from the prompt's text. A key
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
from collections.abc import AsyncIterator, Callable, Collection, Sequence
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
from sgl_lang.protocol.wire import (
    ENVELOPE_ROUTE,
    SERVER_MARKER,
    envelope,
    prompt_to_json,
    request_to_json,
    result_from_json,
)

API_KEY_ENV = "SGL_API_KEY"
TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=600.0)
NUM_CONNECT_RETRIES = 3  # a server that is still starting: 0.5 s, 1 s, 2 s
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# SGLang's router answers 500 when the worker it picked cannot be reached (after 2 such
# failures its circuit breaker, set by `sgl serve --replicas`, takes the worker out)
ROUTER_RETRY_STATUSES = RETRY_STATUSES | {500}
FOREIGN_STATUSES = frozenset({400, 404, 405, 422})  # how other servers refuse the envelope


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
        self._routed: bool | None = None  # through SGLang's router; None: not asked yet

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        """Streamed when `on_chunk` reads the pieces; else one answer, which SGLang's router
        sends again to another worker when its worker dies before answering."""
        request = replace(request, prompt=_inline_images(request.prompt))
        body = request_to_json(request)
        route_text = request.prompt.plain_text()
        if on_chunk is None:
            return self._result(await self._post("/generate", body, route_text))
        text = ""
        async for event in self._events("/generate", {**body, "stream": True}, route_text):
            if "error" in event:
                raise BackendError(f"{self.url}: {_message(event['error'])}")
            piece = event["text"][len(text) :]
            text = event["text"]
            if piece:
                on_chunk(piece)
            if event.get("meta_info", {}).get("finish_reason") is not None:
                return self._result(event)
        raise BackendError(f"{self.url}: the stream ended without a result")

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        body = {"prompt": prompt_to_json(prompt), "choices": list(choices), "method": method}
        answer = await self._post("/score", body, prompt.plain_text())
        return [float(s) for s in answer["scores"]]

    async def cache_prefix(self, prompt: Prompt) -> None:
        await self._post("/cache_prefix", {"prompt": prompt_to_json(prompt)}, prompt.plain_text())

    def _result(self, event: dict[str, Any]) -> GenResult:
        try:
            return result_from_json(event)
        except ValueError as exc:
            raise BackendError(f"{self.url}: {exc}") from None

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

    async def _via_router(self) -> bool:
        """Whether the server is SGLang's router over `sgl serve` workers rather than one of
        them (asked once). Both answer `/get_model_info` in the envelope, naming our wire (the
        router routes it as any request, around a dead worker); only a worker answers `/stats`,
        which the router does not pass on. Any other server is an error."""
        if self._routed is None:
            probe = envelope("/get_model_info", {}, "")
            info = await self._send(
                "POST", ENVELOPE_ROUTE, probe, accept=FOREIGN_STATUSES, retry=ROUTER_RETRY_STATUSES
            )
            if SERVER_MARKER not in _json_or_empty(info):
                raise BackendError(
                    f"{self.url} is not an `sgl serve` server (nor SGLang's router over some); "
                    f"for an OpenAI-compatible server use the backend `openai:MODEL@{self.url}/v1`"
                )
            stats = await self._send("GET", "/stats", accept={404})
            self._routed = stats.status_code == 404
        return self._routed

    async def _post(self, path: str, body: dict[str, Any], route_text: str) -> dict[str, Any]:
        response = await self._send_native(path, body, route_text, stream=False)
        try:
            return dict(response.json())
        except ValueError:
            raise BackendError(f"{self.url}{path}: the answer is not JSON") from None

    async def _events(
        self, path: str, body: dict[str, Any], route_text: str
    ) -> AsyncIterator[dict[str, Any]]:
        """The server-sent events of a streamed request, as dicts, until `[DONE]`."""
        response = await self._send_native(path, body, route_text, stream=True)
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

    async def _send_native(
        self, path: str, body: dict[str, Any], route_text: str, *, stream: bool
    ) -> httpx.Response:
        """POST a native request: to `path`, or through the router in the envelope
        (docs/server.md) whose `prompt`, `route_text`, the router's cache-aware policy reads."""
        if await self._via_router():
            body = envelope(path, body, route_text)
            return await self._send(
                "POST", ENVELOPE_ROUTE, body, stream=stream, retry=ROUTER_RETRY_STATUSES, label=path
            )
        return await self._send("POST", path, body, stream=stream)

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        stream: bool = False,
        accept: Collection[int] = (),
        retry: Collection[int] = RETRY_STATUSES,
        label: str | None = None,
    ) -> httpx.Response:
        """Send with retries on connection failures and on the statuses in `retry` (overload);
        HTTP errors (but the statuses in `accept`) become `BackendError`s naming the status,
        the server's message and `label` (default: `path`)."""
        client = self._http()
        label = label or path
        for attempt in range(NUM_CONNECT_RETRIES + 1):
            last = attempt == NUM_CONNECT_RETRIES
            try:
                request = client.build_request(method, path, json=body)
                response = await client.send(request, stream=stream)
            except httpx.ConnectError as exc:
                if last:
                    raise BackendError(
                        f"cannot reach the sgl server at {self.url}: {exc}"
                    ) from None
            except httpx.HTTPError as exc:
                raise BackendError(f"{self.url}{label}: {type(exc).__name__}: {exc}") from None
            else:
                if response.status_code < 400 or response.status_code in accept:
                    return response
                if last or response.status_code not in retry:
                    await response.aread()
                    raise BackendError(
                        f"{self.url}{label} answered {response.status_code}: "
                        f"{_error_text(response)}"
                    )
                await response.aclose()
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


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
