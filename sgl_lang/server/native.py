"""`sgl serve`'s native routes, in SGLang's formats so its clients work unchanged:

    POST /generate       {"text" | "input_ids" | "prompt", "sampling_params": {...}, "stream"}
                         -> {"text", "meta_info": {"prompt_tokens", "cached_tokens",
                            "completion_tokens", "finish_reason": {"type", "kind"}}};
                         streamed as server-sent events with the text so far, then [DONE]
    POST /score          {"prompt" | "text", "choices", "method"} -> {"scores": [...]}
    POST /cache_prefix   {"prompt" | "text" | "input_ids"}  (a fork/batch hint)
    POST /flush_cache    -> {"num_tokens_freed"}
    GET  /health         -> {"status": "ok"}, or 503 and the error body when the engine cannot serve
    GET  /get_model_info, /stats (JSON), /metrics (Prometheus text)

`prompt` and `sampling_params` are the wire format of `sgl_lang.protocol.wire` (the `http`
backend's); a `prompt` is rendered and healed exactly as the `local` backend does.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from sgl_lang.protocol import GenRequest, GenResult, Prompt, Text
from sgl_lang.protocol.wire import prompt_from_json, request_from_json, result_to_json
from sgl_lang.server import bounds
from sgl_lang.server.serving import (
    ServedModel,
    error_body,
    sse_stream,
    stream_generate,
    unless_disconnected,
)


class SamplingParamsIn(BaseModel):
    """SGLang's sampling parameters (unknown fields are ignored, as SGLang clients send many),
    plus `heal`, `choices`, `tools` and `tool_choice`. Ranges are checked here (bounds.py) and by the runtime's
    SamplingParams; `max_new_tokens` at most the model's context, by the route."""

    model_config = ConfigDict(extra="ignore")

    max_new_tokens: bounds.MaxTokens = 128
    stop: str | list[str] | None = None
    temperature: bounds.Temperature = 1.0
    top_p: bounds.TopP = 1.0
    top_k: bounds.TopK = -1  # -1 (SGLang) or 0: off
    min_p: bounds.MinP = 0.0
    frequency_penalty: bounds.Penalty = 0.0
    presence_penalty: bounds.Penalty = 0.0
    seed: bounds.Seed | None = None
    sampling_seed: bounds.Seed | None = None  # SGLang's name for `seed`
    ignore_eos: bool = False
    heal: bool | None = None  # default: on for a structured `prompt`, off for raw text/ids
    regex: str | None = None
    json_schema: str | dict[str, Any] | None = None
    choices: bounds.Choices | None = None
    tools: list[dict[str, Any]] | None = None  # OpenAI's format; decoded constrained
    tool_choice: str | None = None  # auto, required, none


class GenerateIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str | None = None
    input_ids: list[bounds.TokenId] | None = None
    prompt: dict[str, Any] | None = None
    sampling_params: SamplingParamsIn = SamplingParamsIn()
    stream: bool = False


class ScoreIn(BaseModel):
    text: str | None = None
    prompt: dict[str, Any] | None = None
    choices: bounds.Choices
    method: str = "normalized"


class CachePrefixIn(BaseModel):
    text: str | None = None
    input_ids: list[bounds.TokenId] | None = None
    prompt: dict[str, Any] | None = None


def router(model: ServedModel) -> APIRouter:
    """The native routes on `model`."""
    api = APIRouter()
    bridged, engine = model.bridged, model.engine

    @api.get("/health", response_model=None)
    async def health() -> Response | dict[str, str]:
        """{"status": "ok"} while the engine serves; 503 with the error body when it cannot
        (closed, or stopped by an internal error)."""
        state = engine.health()
        if not state.serving:
            body = error_body(state.error or "the engine cannot serve", 503, "server_error")
            return JSONResponse(body, status_code=503)
        return {"status": "ok"}

    @api.get("/get_model_info")
    async def model_info() -> dict[str, Any]:
        return {"model_path": model.name, "is_generation": True}

    @api.post("/generate", response_model=None)
    async def generate(body: GenerateIn, request: Request) -> Response | dict[str, Any]:
        events = _generate_events(_generation(model, body))
        if not body.stream:
            return await unless_disconnected(request, _last(events))
        # the first event comes after admission: a request that cannot run is still a 400
        first = await unless_disconnected(request, anext(events))
        return StreamingResponse(sse_stream(_chain(first, events)), media_type="text/event-stream")

    @api.post("/score")
    async def score(body: ScoreIn, request: Request) -> dict[str, Any]:
        prompt = _prompt_of(body.text, body.prompt)
        work = bridged.score(prompt, body.choices, body.method)
        return {"scores": await unless_disconnected(request, work)}

    @api.post("/cache_prefix")
    async def cache_prefix(body: CachePrefixIn) -> dict[str, Any]:
        if body.input_ids is not None:
            bounds.check_ids(body.input_ids, model.vocab_size)
            meta = await bridged.prefill(body.input_ids)
            return {"prompt_tokens": meta.prompt_tokens, "cached_tokens": meta.cached_tokens}
        await bridged.cache_prefix(_prompt_of(body.text, body.prompt))
        return {}

    @api.post("/flush_cache")  # a state change: POST only (GET is 405)
    async def flush_cache() -> dict[str, int]:
        return {"num_tokens_freed": await asyncio.to_thread(engine.flush_cache)}

    @api.get("/stats")
    async def stats() -> dict[str, Any]:
        s = engine.stats()
        return {**s.__dict__, "cache_hit_rate": s.cache_hit_rate, "kv_usage": s.kv_usage}

    @api.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(prometheus_text(model))

    return api


def _prompt_of(text: str | None, prompt: dict[str, Any] | None) -> Prompt:
    if (text is None) == (prompt is None):
        raise HTTPException(400, "give exactly one of `text` and `prompt`")
    if prompt is not None:
        try:
            return prompt_from_json(prompt)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
    return Prompt((Text(text or ""),))


def _gen_request(
    model: ServedModel, prompt: Prompt, params: SamplingParamsIn, heal: bool
) -> GenRequest:
    try:
        request = request_from_json(prompt, params.model_dump(), heal=heal)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    bounds.check_max_tokens("max_new_tokens", request.max_tokens, model.context_len)
    return request


def _generation(model: ServedModel, body: GenerateIn) -> AsyncIterator[str | GenResult]:
    """The pieces and result of a /generate request (checked now, run when iterated)."""
    given = [body.text is not None, body.input_ids is not None, body.prompt is not None]
    if sum(given) != 1:
        raise HTTPException(400, "give exactly one of `text`, `input_ids` and `prompt`")
    if body.input_ids is not None:  # no rendering, no healing
        bounds.check_ids(body.input_ids, model.vocab_size)
        if body.sampling_params.tools:
            raise HTTPException(400, "`tools` need a `prompt` or `text` (they are rendered in)")
        request = _gen_request(model, Prompt(()), body.sampling_params, heal=False)
        return stream_generate(
            functools.partial(model.bridged.generate_ids, body.input_ids, request),
            request,
        )
    prompt = _prompt_of(body.text, body.prompt)
    request = _gen_request(model, prompt, body.sampling_params, heal=body.prompt is not None)
    return stream_generate(functools.partial(model.bridged.generate, request), request)


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
            yield result_to_json(item)


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


async def _last(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    async for event in events:
        last = event
    return last


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
