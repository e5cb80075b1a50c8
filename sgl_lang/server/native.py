"""`sgl serve`: the runtime behind HTTP (FastAPI), one engine shared by every client.

Native endpoints, in SGLang's formats so its clients work unchanged:

    POST /generate       {"text" | "input_ids" | "prompt", "sampling_params": {...}, "stream"}
                         -> {"text", "meta_info": {"prompt_tokens", "cached_tokens",
                            "completion_tokens", "finish_reason": {"type", "kind"}}};
                         streamed as server-sent events with the text so far, then [DONE]
    POST /score          {"prompt" | "text", "choices", "method"} -> {"scores": [...]}
    POST /cache_prefix   {"prompt" | "text" | "input_ids"}  (a fork/batch hint)
    POST /flush_cache    -> {"num_tokens_freed"}
    GET  /health, /get_model_info, /stats (JSON), /metrics (Prometheus text)

`prompt` is the structured prompt of `sgl_lang.backends.http` (segments and open role),
rendered and healed exactly as the `local` backend does. The OpenAI-compatible `/v1/...`
endpoints live in `openai_api.py`. Every error is a JSON body `{"error": {"message", "type",
"code"}}` with a 4xx status (5xx only for server faults); a request that fails never affects
another, and a client that disconnects cancels its request, which frees its KV slots.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from sgl_lang.backends.http import prompt_from_json
from sgl_lang.backends.local import sampling_params
from sgl_lang.protocol import (
    BackendError,
    Choices,
    GenRequest,
    GenResult,
    JsonSchema,
    Prompt,
    Regex,
    Text,
)
from sgl_lang.runtime import openai_api
from sgl_lang.runtime.request import RequestError
from sgl_lang.runtime.serving import (
    ClientGone,
    ServedModel,
    sse_stream,
    stream_generate,
    unless_disconnected,
)

API_KEY_ENV = "SGL_API_KEY"
OPEN_PATHS = frozenset({"/health"})


class SamplingParamsIn(BaseModel):
    """SGLang's sampling parameters (unknown fields are ignored, as SGLang clients send many),
    plus `heal` and `choices`. Values are checked by the runtime's SamplingParams."""

    model_config = ConfigDict(extra="ignore")

    max_new_tokens: int = 128
    stop: str | list[str] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 (SGLang) or 0: off
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    sampling_seed: int | None = None  # SGLang's name for `seed`
    ignore_eos: bool = False
    heal: bool | None = None  # default: on for a structured `prompt`, off for raw text/ids
    regex: str | None = None
    json_schema: str | dict[str, Any] | None = None
    choices: list[str] | None = None


class GenerateIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str | None = None
    input_ids: list[int] | None = None
    prompt: dict[str, Any] | None = None
    sampling_params: SamplingParamsIn = SamplingParamsIn()
    stream: bool = False


class ScoreIn(BaseModel):
    text: str | None = None
    prompt: dict[str, Any] | None = None
    choices: list[str]
    method: str = "normalized"


class CachePrefixIn(BaseModel):
    text: str | None = None
    input_ids: list[int] | None = None
    prompt: dict[str, Any] | None = None


def create_app(model: ServedModel, *, api_key: str | None = None) -> FastAPI:
    """The server's ASGI app on `model` (`api_key`, else `$SGL_API_KEY`: required as a
    bearer token or `x-api-key` on every path but /health)."""
    api_key = api_key or os.environ.get(API_KEY_ENV) or None

    async def check_key(request: Request) -> None:
        if api_key is None or request.url.path in OPEN_PATHS:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "")
        if given.removeprefix("Bearer ").strip() != api_key:
            raise HTTPException(401, "missing or wrong API key")

    app = FastAPI(title="sgl serve", dependencies=[Depends(check_key)])
    app.state.model = model
    _add_error_handlers(app)
    _add_native_routes(app, model)
    app.include_router(openai_api.router(model))
    return app


def error_body(message: str, status: int, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status}}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return JSONResponse(error_body(problems, 400), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), exc.status_code), exc.status_code)

    @app.exception_handler(BackendError)
    async def backend_error(_: Request, exc: BackendError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, 400), status_code=400)

    @app.exception_handler(ClientGone)
    async def gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)


def _add_native_routes(app: FastAPI, model: ServedModel) -> None:
    backend, engine = model.backend, model.engine

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/get_model_info")
    async def model_info() -> dict[str, Any]:
        return {"model_path": model.name, "is_generation": True}

    @app.post("/generate", response_model=None)
    async def generate(body: GenerateIn, request: Request) -> Response | dict[str, Any]:
        events = _generate_events(_generation(model, body))
        if not body.stream:
            return await unless_disconnected(request, _last(events))
        # the first event comes after admission: a request that cannot run is still a 400
        first = await unless_disconnected(request, anext(events))
        return StreamingResponse(
            sse_stream(_chain(first, events), lambda exc: error_body(_plain(exc), 400)),
            media_type="text/event-stream",
        )

    @app.post("/score")
    async def score(body: ScoreIn, request: Request) -> dict[str, Any]:
        prompt = _prompt_of(body.text, body.prompt)
        work = backend.score(prompt, body.choices, body.method)
        return {"scores": await unless_disconnected(request, work)}

    @app.post("/cache_prefix")
    async def cache_prefix(body: CachePrefixIn) -> dict[str, Any]:
        if body.input_ids is not None:
            meta = await engine.cache_prefix(body.input_ids)
            return {"prompt_tokens": meta.prompt_tokens, "cached_tokens": meta.cached_tokens}
        await backend.cache_prefix(_prompt_of(body.text, body.prompt))
        return {}

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> dict[str, int]:
        return {"num_tokens_freed": await asyncio.to_thread(engine.flush_cache)}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        s = engine.stats()
        return {**s.__dict__, "cache_hit_rate": s.cache_hit_rate, "kv_usage": s.kv_usage}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(prometheus_text(model))


def _prompt_of(text: str | None, prompt: dict[str, Any] | None) -> Prompt:
    if (text is None) == (prompt is None):
        raise HTTPException(400, "give exactly one of `text` and `prompt`")
    if prompt is not None:
        try:
            return prompt_from_json(prompt)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
    return Prompt((Text(text or ""),))


def gen_request(prompt: Prompt, params: SamplingParamsIn, heal: bool) -> GenRequest:
    """The backend request for SGLang-style `params` (their constraint fields included)."""
    constraints = [params.regex, params.json_schema, params.choices]
    if sum(c is not None for c in constraints) > 1:
        raise HTTPException(400, "give at most one of `regex`, `json_schema` and `choices`")
    constraint: Regex | JsonSchema | Choices | None = None
    if params.regex is not None:
        constraint = Regex(params.regex)
    elif params.json_schema is not None:
        schema = params.json_schema
        try:
            schema = json.loads(schema) if isinstance(schema, str) else schema
        except json.JSONDecodeError as exc:
            raise HTTPException(400, f"`json_schema` is not JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise HTTPException(400, "`json_schema` must be a JSON object")
        constraint = JsonSchema(schema)
    elif params.choices is not None:
        constraint = Choices(tuple(params.choices))
    stop = (params.stop,) if isinstance(params.stop, str) else tuple(params.stop or ())
    return GenRequest(
        prompt,
        max_tokens=params.max_new_tokens,
        stop=stop,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=max(params.top_k, 0),
        min_p=params.min_p,
        frequency_penalty=params.frequency_penalty,
        presence_penalty=params.presence_penalty,
        seed=params.seed if params.seed is not None else params.sampling_seed,
        ignore_eos=params.ignore_eos,
        heal=heal if params.heal is None else params.heal,
        constraint=constraint,
    )


def _generation(model: ServedModel, body: GenerateIn) -> AsyncIterator[str | GenResult]:
    """The pieces and result of a /generate request (checked now, run when iterated)."""
    given = [body.text is not None, body.input_ids is not None, body.prompt is not None]
    if sum(given) != 1:
        raise HTTPException(400, "give exactly one of `text`, `input_ids` and `prompt`")
    if body.input_ids is not None:
        request = gen_request(Prompt(()), body.sampling_params, heal=False)
        return _ids_generation(model, body.input_ids, request)
    prompt = _prompt_of(body.text, body.prompt)
    request = gen_request(prompt, body.sampling_params, heal=body.prompt is not None)
    return stream_generate(model.backend, request)


async def _generate_events(
    pieces: AsyncIterator[str | GenResult],
) -> AsyncIterator[dict[str, Any]]:
    """SGLang's /generate events: the text so far, and `meta_info` (final in the last one)."""
    text = ""
    async for item in pieces:
        if isinstance(item, str):
            text += item
            yield {"text": text, "meta_info": {"finish_reason": None}}
        else:
            kind = "stop" if item.finish_reason == "eos" else item.finish_reason
            yield {
                "text": text,
                "meta_info": {
                    "prompt_tokens": item.prompt_tokens,
                    "completion_tokens": item.completion_tokens,
                    "cached_tokens": item.cached_tokens,
                    "finish_reason": {"type": kind, "kind": item.finish_reason},
                },
            }


async def _ids_generation(
    model: ServedModel, input_ids: list[int], request: GenRequest
) -> AsyncIterator[str | GenResult]:
    """Generation from token ids, straight on the engine (no rendering, no healing)."""
    engine = model.engine
    params = sampling_params(request, None)
    text, meta = "", None
    try:
        async for chunk in engine.generate(input_ids, params):
            meta = chunk.meta
            if chunk.text:
                text += chunk.text
                yield chunk.text
    except (RequestError, ValueError, RuntimeError) as exc:
        raise BackendError(_plain(exc)) from None
    if meta is None:
        raise BackendError("the engine ended a request without a result")
    reason = meta.finish_reason.value
    last_id = meta.output_ids[-1] if meta.output_ids else None
    if reason == "stop" and not request.ignore_eos and last_id in engine.model_config.eos_token_ids:
        reason = "eos"
    yield GenResult(text, reason, meta.prompt_tokens, meta.completion_tokens, meta.cached_tokens)


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


async def _last(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    async for event in events:
        last = event
    return last


def _plain(exc: Exception) -> str:
    if isinstance(exc, RequestError):
        return str(exc.meta.error)
    if isinstance(exc, BackendError):
        return exc.message
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    return str(exc) or type(exc).__name__


def prometheus_text(model: ServedModel) -> str:
    """The engine's counters and gauges in the Prometheus text format."""
    s = model.engine.stats()
    rows = [
        ("sgl_cache_hit_rate", "gauge", "cached prompt tokens / prompt tokens", s.cache_hit_rate),
        ("sgl_num_waiting", "gauge", "requests waiting for admission", s.num_waiting),
        ("sgl_num_running", "gauge", "requests prefilling or decoding", s.num_running),
        ("sgl_kv_usage", "gauge", "fraction of KV slots in use", s.kv_usage),
        ("sgl_kv_slots_used", "gauge", "KV slots in use", s.kv_slots_used),
        ("sgl_kv_slots_total", "gauge", "KV slots in the pool", s.kv_slots_total),
        ("sgl_tree_tokens", "gauge", "tokens held by the prefix cache", s.tree_tokens),
        ("sgl_prompt_tokens_total", "counter", "prompt tokens admitted", s.num_prompt_tokens),
        ("sgl_cached_tokens_total", "counter", "prompt tokens from the cache", s.num_cached_tokens),
        ("sgl_decode_tokens_total", "counter", "tokens generated", s.num_decode_tokens),
        ("sgl_requests_finished_total", "counter", "requests finished", s.num_finished),
        ("sgl_prefill_tokens_per_second", "gauge", "prefill throughput", s.prefill_tokens_per_s),
        ("sgl_decode_tokens_per_second", "gauge", "decode throughput", s.decode_tokens_per_s),
    ]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"


def serve(
    model_path: Path | None,
    host: str = "127.0.0.1",
    port: int = 30000,
    *,
    api_key: str | None = None,
    model_name: str | None = None,
) -> None:
    """Load the model and serve until interrupted (blocking)."""
    import uvicorn

    model = ServedModel.load(model_path, model_name)
    uvicorn.run(create_app(model, api_key=api_key), host=host, port=port, log_level="info")
