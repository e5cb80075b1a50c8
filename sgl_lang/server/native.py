"""`sgl serve`'s native routes, in SGLang's formats so its clients (its Python frontend's
`RuntimeEndpoint`, its router) work unchanged; docs/server.md lists what each returns:

    POST /generate       {"text" | "input_ids" (one or a batch) | "prompt", "sampling_params",
                         "stream", "rid", "return_logprob", "logprob_start_len",
                         "top_logprobs_num", "return_text_in_logprobs"} -> {"text", "meta_info"}
                         (a list for a batch); `max_new_tokens: 0` only computes the prompt;
                         streamed as server-sent events with the text so far, then [DONE]
    POST /score          {"prompt" | "text", "choices", "method"} -> {"scores": [...]}
    POST /cache_prefix   {"prompt" | "text" | "input_ids"}  (a fork/batch hint)
    POST /flush_cache    -> {"num_tokens_freed"}
    POST /tokenize, /detokenize, /concate_and_append_request
    GET  /health, /health_generate, /get_model_info, /get_server_info (/server_info),
         /stats (JSON), /metrics (Prometheus text)

`prompt` and `sampling_params` are the wire format of `sgl_lang.protocol.wire` (the `http`
backend's); a `prompt` is rendered and healed exactly as the `local` backend does.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sgl_lang.protocol import GenRequest, GenResult, Prompt, Text
from sgl_lang.protocol.wire import prompt_from_json, request_from_json, result_to_json
from sgl_lang.server import bounds, worker_api
from sgl_lang.server.generate import Job, job_events, new_rid
from sgl_lang.server.serving import (
    ServedModel,
    error_body,
    sse_stream,
    stream_generate,
    unless_disconnected,
)


class SamplingParamsIn(BaseModel):
    """SGLang's sampling parameters (unknown fields are ignored, as SGLang clients send many),
    plus `heal`, `choices`, `grammar`, `tools`, `tool_choice` and the optional `gen` features
    (`min_tokens`, `stop_regex`, `include_stop`, `logprobs`, `reasoning`). Ranges are checked
    here (bounds.py) and by the runtime's
    SamplingParams; `max_new_tokens` at most the model's context, by the route."""

    model_config = ConfigDict(extra="ignore")

    max_new_tokens: bounds.MaxTokens = 128  # 0: compute the prompt only (SGLang's prefill)
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
    stop_token_ids: list[bounds.TokenId] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1  # SGLang's parallel samples: one here
    min_new_tokens: Annotated[int, Field(ge=0, le=0)] = 0  # SGLang's: not supported
    heal: bool | None = None  # default: on for a structured `prompt`, off for raw text/ids
    regex: str | None = None
    json_schema: str | dict[str, Any] | None = None
    choices: bounds.Choices | None = None
    tools: list[dict[str, Any]] | None = None  # OpenAI's format; decoded constrained
    tool_choice: str | None = None  # auto, required, none
    grammar: str | None = None  # Lark syntax
    min_tokens: Annotated[int, Field(ge=0)] = 0
    stop_regex: str | None = None
    include_stop: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None  # of generated tokens, top K
    reasoning: bool = False
    reasoning_budget: Annotated[int, Field(ge=1)] | None = None


class GenerateIn(BaseModel):
    """SGLang's GenerateReqInput (one prompt or a batch; the per-prompt fields may be lists),
    or our structured `prompt`."""

    model_config = ConfigDict(extra="ignore")

    text: str | list[str] | None = None
    input_ids: list[bounds.TokenId] | None = None
    input_ids_batch: list[list[bounds.TokenId]] | None = None  # a batch of `input_ids`
    prompt: dict[str, Any] | None = None
    sampling_params: SamplingParamsIn | list[SamplingParamsIn] = SamplingParamsIn()
    stream: bool = False
    rid: str | list[str] | None = None
    return_logprob: bool | list[bool] = False
    logprob_start_len: bounds.LogprobStart | list[bounds.LogprobStart] = -1
    top_logprobs_num: bounds.TopLogprobsNum | list[bounds.TopLogprobsNum] = 0
    return_text_in_logprobs: bool = False

    @model_validator(mode="before")
    @classmethod
    def _batch_of_ids(cls, data: Any) -> Any:
        """SGLang's `input_ids` holds a batch as a list of lists."""
        ids = data.get("input_ids") if isinstance(data, dict) else None
        if isinstance(ids, list) and ids and isinstance(ids[0], list):
            return {**data, "input_ids": None, "input_ids_batch": ids}
        return data

    @property
    def batch_size(self) -> int | None:
        """The number of prompts of a batch; None for one prompt."""
        if isinstance(self.text, list):
            return len(self.text)
        return None if self.input_ids_batch is None else len(self.input_ids_batch)


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

    @api.post("/generate", response_model=None)
    async def generate(
        body: GenerateIn, request: Request
    ) -> Response | dict[str, Any] | list[dict[str, Any]]:
        jobs = await _jobs(model, body)
        if body.batch_size is not None:
            if body.stream:
                raise HTTPException(400, "`stream` takes one prompt, not a batch")
            return await unless_disconnected(request, _all_last(model, jobs))
        one = job_events(model, jobs[0]) if jobs else _generate_events(_generation(model, body))
        if not body.stream:
            return await unless_disconnected(request, _last(one))
        # the first event comes after admission: a request that cannot run is still a 400
        first = await unless_disconnected(request, anext(one))
        return StreamingResponse(sse_stream(_chain(first, one)), media_type="text/event-stream")

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

    api.include_router(worker_api.router(model))
    return api


async def _jobs(model: ServedModel, body: GenerateIn) -> list[Job]:
    """The SGLang jobs of a `text` or `input_ids` request, or of a `prompt` that only computes
    the prompt; none for a `prompt`, or a `text` with `heal`, that generates (the bridge's
    road: rendered, healed)."""
    ids_given = body.input_ids is not None or body.input_ids_batch is not None
    if sum([body.text is not None, ids_given, body.prompt is not None]) != 1:
        raise HTTPException(400, "give exactly one of `text`, `input_ids` and `prompt`")
    size = body.batch_size
    if size == 0:
        raise HTTPException(400, "a batch needs at least one prompt")
    params = _per_prompt(body.sampling_params, size, "sampling_params")
    healed = body.prompt is not None or (size is None and params[0].heal is True)
    if healed and params[0].max_new_tokens:
        if _any(body.return_logprob):
            raise HTTPException(400, "`return_logprob` takes unhealed `text` or `input_ids`")
        return []
    if any(p.tools for p in params):
        raise HTTPException(400, "`tools` need a structured `prompt` or a healed `text`")
    if body.prompt is not None:
        ids_list = [
            await asyncio.to_thread(model.bridged.prompt_ids, _prompt_of(None, body.prompt))
        ]
    elif body.text is not None:
        texts = body.text if isinstance(body.text, list) else [body.text]
        ids_list = [
            await asyncio.to_thread(model.bridged.prompt_ids, Prompt((Text(text),)))
            for text in texts
        ]
    else:
        batch = body.input_ids_batch
        ids_list = batch if batch is not None else [body.input_ids or []]
        for ids in ids_list:
            bounds.check_ids(ids, model.vocab_size)
    return [
        _job(model, ids, p, rid, logprob, start, top, body.return_text_in_logprobs)
        for ids, p, rid, logprob, start, top in zip(
            ids_list,
            params,
            _per_prompt(body.rid, size, "rid", new_rid),
            _per_prompt(body.return_logprob, size, "return_logprob"),
            _per_prompt(body.logprob_start_len, size, "logprob_start_len"),
            _per_prompt(body.top_logprobs_num, size, "top_logprobs_num"),
            strict=True,
        )
    ]


def _job(
    model: ServedModel,
    ids: list[int],
    params: SamplingParamsIn,
    rid: str,
    return_logprob: bool,
    logprob_start_len: int,
    top_logprobs_num: int,
    text_in_logprobs: bool,
) -> Job:
    request = _gen_request(model, Prompt(()), params, heal=False)
    return Job(
        ids,
        request,
        rid,
        tuple(params.stop_token_ids or ()),
        return_logprob,
        logprob_start_len,
        top_logprobs_num,
        text_in_logprobs,
    )


def _per_prompt(value: Any, size: int | None, name: str, make: Any = None) -> list[Any]:
    """A per-prompt field as one value per prompt: a list must have one per prompt, a single
    value (or `make()` for each when missing) goes to every prompt."""
    count = 1 if size is None else size
    if isinstance(value, list):
        if size is None or len(value) != size:
            raise HTTPException(400, f"`{name}` must have one value per prompt")
        return value
    if value is None and make is not None:
        return [make() for _ in range(count)]
    return [value] * count


def _any(value: bool | list[bool]) -> bool:
    return any(value) if isinstance(value, list) else value


async def _all_last(model: ServedModel, jobs: list[Job]) -> list[dict[str, Any]]:
    """The final events of a batch's jobs, run together; the first failure cancels the rest."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_last(job_events(model, job))) for job in jobs]
    except ExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return [task.result() for task in tasks]


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
    """The pieces and result of a /generate request with a structured `prompt` or a healed
    `text` (checked now, run when iterated)."""
    params = _per_prompt(body.sampling_params, None, "sampling_params")[0]
    prompt = _prompt_of(body.text if isinstance(body.text, str) else None, body.prompt)
    request = _gen_request(model, prompt, params, heal=body.prompt is not None)
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
