"""`sgl serve`'s OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

Requests follow OpenAI's schema; the model name is not checked (the server has one model).
`response_format` (`json_schema`, `json_object`) is enforced while decoding, and so are the
extensions other open servers accept: `regex` (SGLang), `guided_regex`, `guided_choice` and
`guided_json` (vLLM), `top_k`, `min_p`, `ignore_eos`, and `continue_final_message` (the last
message is continued instead of answered). `/v1/completions` with `echo` and `max_tokens: 0`
returns the prompt itself and, with `logprobs`, each prompt token's log-prob (the first has
none), as vLLM does: clients score text with it. `logprobs` (chat: with `top_logprobs`) of
generated tokens are OpenAI's objects; streamed, they all come with the last chunk. `n` > 1
(up to `MAX_N`) runs the completions side by side, choice i with `seed` + i when a seed is
given; it cannot be streamed. `tools`/`tool_choice` (auto, required, none or a named function)
are decoded constrained as the local backend does (`bridge/tools.py`: the call always names a
listed tool, with arguments valid for its schema) and answered in OpenAI's format
(`tool_calls`, finish reason "tool_calls"); `tool` messages and assistant `tool_calls` in the
chat are the model's own earlier calls. Images in messages are read (`image_url` parts) and
refused by a model that cannot see them (400). `usage.prompt_tokens_details.cached_tokens`
reports the prefix-cache hit (of the first choice).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sgl_lang.protocol import (
    GenRequest,
    GenResult,
    Image,
    Message,
    Part,
    Prompt,
    Text,
    TokenLogprob,
    ToolCall,
    ToolResult,
)
from sgl_lang.protocol.wire import request_from_json
from sgl_lang.server import bounds
from sgl_lang.server.serving import (
    ServedModel,
    sse_stream,
    stream_generate,
    unless_disconnected,
)

MAX_N = 16  # completions per request
MAX_TOP_LOGPROBS = 20  # OpenAI's limit, and the engine's
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _CommonIn(BaseModel):
    """The fields both endpoints share (unknown fields are ignored, as OpenAI clients send
    ones that do not apply here, such as `user`)."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    max_tokens: bounds.MaxTokens | None = None
    temperature: bounds.Temperature = 1.0
    top_p: bounds.TopP = 1.0
    top_k: bounds.TopK = 0
    min_p: bounds.MinP = 0.0
    frequency_penalty: bounds.Penalty = 0.0
    presence_penalty: bounds.Penalty = 0.0
    seed: bounds.Seed | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=bounds.INT32_MAX)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    ignore_eos: bool = False
    regex: str | None = None
    guided_regex: str | None = None
    guided_choice: bounds.Choices | None = None
    guided_json: dict[str, Any] | None = None


class ChatIn(_CommonIn):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: bounds.MaxTokens | None = None
    response_format: dict[str, Any] | None = None
    continue_final_message: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionIn(_CommonIn):
    prompt: str
    echo: bool = False


def router(model: ServedModel) -> APIRouter:
    """The /v1 routes on `model`."""
    api = APIRouter(prefix="/v1")

    @api.get("/models")
    async def models() -> dict[str, Any]:
        card = {"id": model.name, "object": "model", "created": 0, "owned_by": "sgl"}
        return {"object": "list", "data": [card]}

    @api.post("/chat/completions", response_model=None)
    async def chat(body: ChatIn, request: Request) -> Response | dict[str, Any]:
        return await _respond(model, body, chat_prompt(body), request, chat=True)

    @api.post("/completions", response_model=None)
    async def completions(body: CompletionIn, request: Request) -> Response | dict[str, Any]:
        prompt = Prompt((Text(body.prompt),))
        if body.echo:
            return await unless_disconnected(request, _echo(model, body, prompt))
        return await _respond(model, body, prompt, request, chat=False)

    return api


def chat_prompt(body: ChatIn) -> Prompt:
    """The chat as a Prompt: a new assistant message follows, unless `continue_final_message`
    leaves the last message open."""
    segments = []
    for i, message in enumerate(body.messages):
        role = ROLES.get(message.role)
        if role is None:
            raise HTTPException(400, f"messages[{i}]: role `{message.role}` is not supported")
        segments.append(Message(role, _message_parts(message, i)))
    open_role = segments[-1].role if body.continue_final_message else "assistant"
    return Prompt(tuple(segments), open_role)


def _message_parts(message: ChatMessageIn, index: int) -> list[Part]:
    """The parts of a message: its content; an assistant's `tool_calls` after it; a `tool`
    message's content as the result of call `tool_call_id`."""
    parts = _content_parts(message.content, index)
    if message.role == "tool":
        content = "".join(part for part in parts if isinstance(part, str))
        return [ToolResult(message.tool_call_id or "", message.name or "", content)]
    for call in message.tool_calls or ():
        parts.append(_tool_call(call, index))
    return parts


def _tool_call(call: dict[str, Any], index: int) -> ToolCall:
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise HTTPException(400, f"messages[{index}]: a tool call without a function name")
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (json.JSONDecodeError, TypeError):
        arguments = None
    if not isinstance(arguments, dict):
        raise HTTPException(400, f"messages[{index}]: a tool call's arguments are not an object")
    return ToolCall(str(call.get("id", "")), function["name"], arguments)


def _content_parts(content: str | list[dict[str, Any]] | None, index: int) -> list[Part]:
    """A message's content: its text, or its `text` and `image_url` parts (URLs or `data:`
    URLs; the served model refuses them when it cannot see images)."""
    if content is None or isinstance(content, str):
        return [content or ""]
    parts: list[Part] = []
    for part in content:
        image_url = part.get("image_url") if part.get("type") == "image_url" else None
        url = image_url.get("url") if isinstance(image_url, dict) else None
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif isinstance(url, str):
            parts.append(_image(url, index))
        else:
            raise HTTPException(
                400, f"messages[{index}]: content of type `{part.get('type')}` is not supported"
            )
    return parts


def _image(url: str, index: int) -> Image:
    if not url.startswith("data:"):
        return Image(url)
    data = url.partition(",")[2]
    try:
        return Image(base64.b64decode(data, validate=True))
    except binascii.Error:
        raise HTTPException(400, f"messages[{index}]: malformed `data:` image URL") from None


async def _echo(model: ServedModel, body: CompletionIn, prompt: Prompt) -> dict[str, Any]:
    """The prompt back as the completion, with its tokens' log-probs when `logprobs` is set."""
    if body.max_tokens != 0 or body.stream or body.n != 1:
        raise HTTPException(400, "`echo` needs `max_tokens: 0` (no generation) and no `stream`")
    bridged = model.bridged
    ids = await asyncio.to_thread(bridged.prompt_ids, prompt)  # a long prompt: off the loop
    meta = await bridged.prefill(ids, logprobs=bool(body.logprobs))
    logprobs = None
    if body.logprobs:
        logprobs = _prompt_logprobs(bridged.tokenizer, ids, meta.prompt_logprobs or ())
    result = GenResult("", "length", meta.prompt_tokens, 0, meta.cached_tokens)
    return _Shape(model.name, chat=False, include_usage=False).echo(body.prompt, result, logprobs)


def _prompt_logprobs(tokenizer: Any, ids: list[int], logprobs: Sequence[float]) -> dict[str, Any]:
    """OpenAI's completion `logprobs` for prompt tokens: `top_logprobs` holds only the token
    itself (the runtime does not rank the alternatives)."""
    tokens = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    token_logprobs: list[float | None] = [None, *logprobs]
    offsets = list(itertools.accumulate((len(token) for token in tokens[:-1]), initial=0))
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": [
            None if lp is None else {token: lp}
            for token, lp in zip(tokens, token_logprobs, strict=True)
        ],
        "text_offset": offsets,
    }


def _gen_request(model: ServedModel, body: _CommonIn, prompt: Prompt) -> GenRequest:
    """The request of an OpenAI body: its fields in the wire format's names (SGLang's)."""
    if body.n > MAX_N:
        raise HTTPException(400, f"`n` must be at most {MAX_N}")
    if body.n > 1 and body.stream:
        raise HTTPException(400, "`n` > 1 cannot be streamed")
    json_schema = body.guided_json
    if isinstance(body, ChatIn) and (fmt := _response_format(body.response_format)) is not None:
        if json_schema is not None:
            raise HTTPException(400, "give at most one output constraint")
        json_schema = fmt
    max_tokens = body.max_tokens
    if isinstance(body, ChatIn) and body.max_completion_tokens is not None:
        max_tokens = body.max_completion_tokens
    bounds.check_max_tokens("max_tokens", max_tokens or 0, model.context_len)
    params: dict[str, Any] = {
        "max_new_tokens": max_tokens or 256,
        "stop": body.stop,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "frequency_penalty": body.frequency_penalty,
        "presence_penalty": body.presence_penalty,
        "seed": body.seed,
        "ignore_eos": body.ignore_eos,
        "heal": False,  # OpenAI clients expect the prompt taken as it is
        "regex": body.regex or body.guided_regex or None,
        "choices": body.guided_choice,
        "json_schema": json_schema,
    }
    if isinstance(body, ChatIn) and body.tools:
        params["tools"], params["tool_choice"] = _tools(body.tools, body.tool_choice)
    try:
        request = request_from_json(prompt, params)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return replace(request, logprobs=_num_top_logprobs(body))


def _num_top_logprobs(body: _CommonIn) -> int | None:
    """How many alternatives per generated token the body asks for (None: no log-probs).
    Chat: `logprobs: true` with `top_logprobs`; completions: `logprobs: K`."""
    if isinstance(body, ChatIn):
        if not body.logprobs:
            if body.top_logprobs:
                raise HTTPException(400, "`top_logprobs` needs `logprobs: true`")
            return None
        return body.top_logprobs or 0
    if body.logprobs is None or body.logprobs is False:
        return None
    if not 0 <= int(body.logprobs) <= MAX_TOP_LOGPROBS:
        raise HTTPException(400, f"`logprobs` must be between 0 and {MAX_TOP_LOGPROBS}")
    return int(body.logprobs)


def _tools(
    tools: list[dict[str, Any]], choice: str | dict[str, Any] | None
) -> tuple[list[dict[str, Any]], str]:
    """The tools and the wire's `tool_choice` of OpenAI's: a named function
    (`{"type": "function", "function": {"name": ...}}`) is that one tool, required."""
    if choice is None or isinstance(choice, str):
        return tools, choice or "auto"
    name = (choice.get("function") or {}).get("name")
    named = [
        t for t in tools if isinstance(t, dict) and (t.get("function") or {}).get("name") == name
    ]
    if not named:
        raise HTTPException(400, f"`tool_choice` names `{name}`, which is not in `tools`")
    return named, "required"


def _response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON Schema `response_format` asks for, if any."""
    kind = None if fmt is None else fmt.get("type")
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise HTTPException(400, "`response_format.json_schema.schema` must be an object")
        return schema
    raise HTTPException(400, f"`response_format.type` `{kind}` is not supported")


async def _respond(
    model: ServedModel, body: _CommonIn, prompt: Prompt, request: Request, *, chat: bool
) -> Response | dict[str, Any]:
    gen = _gen_request(model, body, prompt)
    shape = _Shape(
        model.name, chat, include_usage=bool((body.stream_options or {}).get("include_usage"))
    )
    if not body.stream:
        seeds = [None if gen.seed is None else gen.seed + i for i in range(body.n)]
        work = [_whole(model, replace(gen, seed=seed)) for seed in seeds]
        results = await unless_disconnected(request, asyncio.gather(*work))
        return shape.whole(results)
    pieces = stream_generate(functools.partial(model.bridged.generate, gen), gen)
    # the first piece comes after admission: a request that cannot run is still a 400
    first = await unless_disconnected(request, anext(pieces))
    return StreamingResponse(
        sse_stream(shape.chunks(first, pieces)), media_type="text/event-stream"
    )


async def _whole(model: ServedModel, gen: GenRequest) -> GenResult:
    """One whole completion (its errors are raised, as in a stream)."""
    pieces = stream_generate(functools.partial(model.bridged.generate, gen), gen)
    result = await anext(pieces)
    while isinstance(result, str):
        result = await anext(pieces)
    return result


class _Shape:
    """OpenAI's response objects for one request."""

    def __init__(self, model_name: str, chat: bool, include_usage: bool) -> None:
        self.model, self.chat, self.include_usage = model_name, chat, include_usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, stream: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        kind += ".chunk" if stream and self.chat else ""
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(
        self, text: str, finish: str | None, stream: bool, index: int = 0
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": None}
        if not self.chat:
            choice["text"] = text
        elif stream:
            choice["delta"] = {"content": text} if text or finish else {"role": "assistant"}
        else:
            choice["message"] = {"role": "assistant", "content": text}
        return choice

    def _calls_choice(
        self, calls: tuple[ToolCall, ...], stream: bool, index: int = 0
    ) -> dict[str, Any]:
        """The choice of a result with tool calls: the message's (or a delta's) `tool_calls`."""
        wire = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call in calls
        ]
        if stream:
            indexed = [{"index": i, **item} for i, item in enumerate(wire)]
            return {"index": index, "finish_reason": None, "logprobs": None,
                    "delta": {"tool_calls": indexed}}  # fmt: skip
        message = {"role": "assistant", "content": None, "tool_calls": wire}
        return {"index": index, "finish_reason": "tool_calls", "logprobs": None,
                "message": message}  # fmt: skip

    def whole(self, results: Sequence[GenResult]) -> dict[str, Any]:
        """The answer with one choice per result (usage: the prompt once, every completion)."""
        choices = [
            self._calls_choice(r.tool_calls, False, i)
            if r.tool_calls
            else {**self._choice(r.text, _finish(r), False, i), "logprobs": self.logprobs(r)}
            for i, r in enumerate(results)
        ]
        usage = _usage(results[0], sum(r.completion_tokens for r in results))
        return {**self._head(False), "choices": choices, "usage": usage}

    def echo(self, text: str, result: GenResult, logprobs: dict[str, Any] | None) -> dict[str, Any]:
        """The `echo` answer: the prompt as the one choice, with its own log-probs."""
        choice = {**self._choice(text, _finish(result), stream=False), "logprobs": logprobs}
        return {**self._head(False), "choices": [choice], "usage": _usage(result)}

    def logprobs(self, result: GenResult) -> dict[str, Any] | None:
        """OpenAI's `logprobs` of a choice: chat `{"content": [...]}`, completions `{"tokens",
        "token_logprobs", "top_logprobs", "text_offset"}`; None when not asked for."""
        if result.logprobs is None:
            return None
        tokens = result.logprobs
        if self.chat:
            return {"content": [_chat_logprob(token) for token in tokens]}
        texts = [token.text for token in tokens]
        return {
            "tokens": texts,
            "token_logprobs": [token.logprob for token in tokens],
            "top_logprobs": [_top_dict(token) for token in tokens],
            "text_offset": list(itertools.accumulate(map(len, texts[:-1]), initial=0)),
        }

    async def chunks(
        self, first: str | GenResult, rest: AsyncIterator[str | GenResult]
    ) -> AsyncIterator[dict[str, Any]]:
        if self.chat:
            yield {**self._head(True), "choices": [self._choice("", None, stream=True)]}
        item = first
        while isinstance(item, str):
            yield {**self._head(True), "choices": [self._choice(item, None, stream=True)]}
            item = await anext(rest)
        if item.tool_calls:
            yield {**self._head(True), "choices": [self._calls_choice(item.tool_calls, True)]}
        last = {**self._choice("", _finish(item), stream=True), "logprobs": self.logprobs(item)}
        yield {**self._head(True), "choices": [last]}
        if self.include_usage:
            yield {**self._head(True), "choices": [], "usage": _usage(item)}


def _finish(result: GenResult) -> Literal["stop", "length", "tool_calls"]:
    if result.finish_reason in ("length", "tool_calls"):
        return "length" if result.finish_reason == "length" else "tool_calls"
    return "stop"


def _top_dict(token: TokenLogprob) -> dict[str, float]:
    """A completion token's `top_logprobs`: text -> log-prob, most likely first."""
    top: dict[str, float] = {}
    for text, logprob in token.top:
        top.setdefault(text, logprob)
    return top


def _chat_logprob(token: TokenLogprob) -> dict[str, Any]:
    def entry(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    top = [entry(text, logprob) for text, logprob in token.top]
    return {**entry(token.text, token.logprob), "top_logprobs": top}


def _usage(result: GenResult, num_completion_tokens: int | None = None) -> dict[str, Any]:
    completion_tokens = result.completion_tokens
    if num_completion_tokens is not None:
        completion_tokens = num_completion_tokens
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": result.prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }
