"""The JSON of prompts, requests and results on the wire between the `http` backend and
`sgl serve`: a structured prompt, SGLang's `sampling_params` (plus `heal`, `choices`,
`grammar`, `tools`, `min_tokens`, `stop_regex`, `include_stop`, `logprobs` and `reasoning`) and
SGLang's `meta_info` (plus `tool_calls`, `logprobs` and `reasoning`). Readers raise ValueError
naming what is wrong."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from sgl_lang.protocol.constraints import Choices, Constraint, Grammar, JsonSchema, Regex
from sgl_lang.protocol.prompts import Image, Message, Part, Prompt, Segment, Text
from sgl_lang.protocol.requests import GenRequest, GenResult, TokenLogprob
from sgl_lang.protocol.tools import TOOL_CHOICES, ToolCall, ToolResult, ToolSpec

ROLES = frozenset({"system", "user", "assistant", "tool"})
CONSTRAINT_FIELDS = ("regex", "json_schema", "choices", "grammar")
DEFAULTS = GenRequest(Prompt(()))


def prompt_to_json(prompt: Prompt) -> dict[str, Any]:
    """`{"segments": [...], "open_role": ...}`; a segment is `{"type": "text", "text"}`,
    `{"type": "message", "role", "content"}` or an image, `{"type": "image", "url" | "data"}`
    (data: base64 bytes). A message's `content` is its text, or (when it holds more) a list of
    parts: `{"type": "text", "text"}`, images, `{"type": "tool_call", "id", "name",
    "arguments"}` and `{"type": "tool_result", "call_id", "name", "content"}`."""
    segments: list[dict[str, Any]] = []
    for segment in prompt.segments:
        if isinstance(segment, Text):
            segments.append({"type": "text", "text": segment.text})
        elif isinstance(segment, Message):
            segments.append(
                {"type": "message", "role": segment.role, "content": _content_to_json(segment)}
            )
        else:
            segments.append(_image_to_json(segment))
    return {"segments": segments, "open_role": prompt.open_role}


def _content_to_json(message: Message) -> str | list[dict[str, Any]]:
    if all(isinstance(part, str) for part in message.content):
        return message.text
    return [_part_to_json(part) for part in message.content]


def _part_to_json(part: Part) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, Image):
        return _image_to_json(part)
    if isinstance(part, ToolCall):
        return {"type": "tool_call", "id": part.id, "name": part.name, "arguments": part.arguments}
    return {
        "type": "tool_result",
        "call_id": part.call_id,
        "name": part.name,
        "content": part.content,
    }


def _image_to_json(image: Image) -> dict[str, Any]:
    if isinstance(image.source, bytes):
        return {"type": "image", "data": base64.b64encode(image.source).decode()}
    return {"type": "image", "url": image.source}


def _image_from_json(item: dict[str, Any]) -> Image | None:
    """The image of an `{"type": "image", ...}` item; None when the item is not one."""
    if item.get("type") == "image" and isinstance(item.get("url"), str):
        return Image(item["url"])
    if item.get("type") == "image" and isinstance(item.get("data"), str):
        return Image(base64.b64decode(item["data"]))
    return None


def _content_from_json(content: Any) -> list[Part] | None:
    """The parts of a message's JSON `content`; None when it is malformed."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return None
    parts: list[Part] = []
    for item in content:
        if not isinstance(item, dict):
            return None
        part = _image_from_json(item) or _tool_part_from_json(item)
        if part is not None:
            parts.append(part)
        elif item.get("type") == "text" and isinstance(item.get("text"), str):
            parts.append(item["text"])
        else:
            return None
    return parts


def _tool_part_from_json(item: dict[str, Any]) -> ToolCall | ToolResult | None:
    names = isinstance(item.get("name"), str)
    if item.get("type") == "tool_call" and names and isinstance(item.get("arguments"), dict):
        return ToolCall(str(item.get("id", "")), item["name"], item["arguments"])
    if item.get("type") == "tool_result" and names and isinstance(item.get("content"), str):
        return ToolResult(str(item.get("call_id", "")), item["name"], item["content"])
    return None


def prompt_from_json(data: Any) -> Prompt:
    """The inverse of `prompt_to_json`."""
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise ValueError("`prompt` must be an object with a list of `segments`")
    segments: list[Segment] = []
    for i, item in enumerate(data["segments"]):
        kind = item.get("type") if isinstance(item, dict) else None
        content = _content_from_json(item.get("content")) if kind == "message" else None
        image = _image_from_json(item) if kind == "image" else None
        if kind == "text" and isinstance(item.get("text"), str):
            segments.append(Text(item["text"]))
        elif kind == "message" and item.get("role") in ROLES and content is not None:
            segments.append(Message(item["role"], content))
        elif image is not None:
            segments.append(image)
        else:
            raise ValueError(f"prompt segment {i} is malformed: {json.dumps(item)[:200]}")
    open_role = data.get("open_role")
    if open_role is not None and open_role not in ROLES:
        raise ValueError(f"`open_role` must be one of {sorted(ROLES)} or null")
    return Prompt(tuple(segments), open_role)


def request_to_json(request: GenRequest) -> dict[str, Any]:
    """A `/generate` body: `{"prompt": prompt_to_json(...), "sampling_params": {...}}`."""
    params: dict[str, Any] = {
        "max_new_tokens": request.max_tokens,
        "stop": list(request.stop),
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "min_p": request.min_p,
        "frequency_penalty": request.frequency_penalty,
        "presence_penalty": request.presence_penalty,
        "seed": request.seed,
        "ignore_eos": request.ignore_eos,
        "heal": request.heal,
        "min_tokens": request.min_tokens,
        "stop_regex": request.stop_regex,
        "include_stop": request.include_stop,
        "logprobs": request.logprobs,
        "reasoning": request.reasoning,
        "reasoning_budget": request.reasoning_budget,
    }
    constraint = request.constraint
    if isinstance(constraint, Regex):
        params["regex"] = constraint.pattern
    elif isinstance(constraint, JsonSchema):
        params["json_schema"] = json.dumps(constraint.schema)
    elif isinstance(constraint, Choices):
        params["choices"] = list(constraint.options)
    elif isinstance(constraint, Grammar):
        params["grammar"] = constraint.source
    if request.tools:
        params["tools"] = [tool.as_openai() for tool in request.tools]
        params["tool_choice"] = request.tool_choice
    return {"prompt": prompt_to_json(request.prompt), "sampling_params": params}


def request_from_json(
    prompt: Prompt, params: Mapping[str, Any], *, heal: bool = DEFAULTS.heal
) -> GenRequest:
    """The request for `prompt` with SGLang-style `sampling_params` (the other half of a
    `request_to_json` body). Missing or null fields keep `GenRequest`'s defaults, except
    `heal`, which defaults to `heal`; `stop` may be one string; `sampling_seed` is SGLang's
    name for `seed`; `top_k` -1 (SGLang) means off, as 0 does; `json_schema` is a JSON Schema
    object or its JSON text. Values are taken as given: the engine checks their ranges."""

    def field(name: str, default: Any) -> Any:
        value = params.get(name)
        return default if value is None else value

    stop = field("stop", ())
    request = GenRequest(
        prompt,
        max_tokens=field("max_new_tokens", DEFAULTS.max_tokens),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        temperature=field("temperature", DEFAULTS.temperature),
        top_p=field("top_p", DEFAULTS.top_p),
        top_k=max(field("top_k", DEFAULTS.top_k), 0),
        min_p=field("min_p", DEFAULTS.min_p),
        frequency_penalty=field("frequency_penalty", DEFAULTS.frequency_penalty),
        presence_penalty=field("presence_penalty", DEFAULTS.presence_penalty),
        seed=field("seed", params.get("sampling_seed")),
        ignore_eos=field("ignore_eos", DEFAULTS.ignore_eos),
        heal=field("heal", heal),
        constraint=constraint_from_json(params),
        tools=tools_from_json(params.get("tools")),
        tool_choice=field("tool_choice", DEFAULTS.tool_choice),
        min_tokens=field("min_tokens", DEFAULTS.min_tokens),
        stop_regex=params.get("stop_regex"),
        include_stop=field("include_stop", DEFAULTS.include_stop),
        logprobs=params.get("logprobs"),
        reasoning=field("reasoning", DEFAULTS.reasoning),
        reasoning_budget=params.get("reasoning_budget"),
    )
    check_tool_choice(request)
    return request


def constraint_from_json(params: Mapping[str, Any]) -> Constraint | None:
    """The constraint of `sampling_params`: at most one of `regex`, `json_schema`, `choices`,
    `grammar` (Lark syntax)."""
    given = [name for name in CONSTRAINT_FIELDS if params.get(name) is not None]
    if len(given) > 1:
        raise ValueError(
            "give at most one output constraint: `regex`, `json_schema`, `choices` or `grammar`"
        )
    if "regex" in given:
        return Regex(params["regex"])
    if "grammar" in given:
        return Grammar(str(params["grammar"]))
    if "choices" in given:
        return Choices(tuple(params["choices"]))
    if "json_schema" in given:
        schema = params["json_schema"]
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise ValueError(f"`json_schema` is not JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise ValueError("`json_schema` must be a JSON object")
        return JsonSchema(schema)
    return None


def tools_from_json(tools: Any) -> tuple[ToolSpec, ...]:
    """Tools in OpenAI's format: `[{"type": "function", "function": {"name", "description",
    "parameters"}}]` (None: no tools)."""
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise ValueError("`tools` must be a list")
    specs = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            raise ValueError(
                f'tools[{i}] must be {{"type": "function", "function": {{"name", ...}}}}'
            )
        parameters = function.get("parameters") or {"type": "object"}
        if not isinstance(parameters, dict):
            raise ValueError(f"tools[{i}].function.parameters must be a JSON Schema object")
        specs.append(ToolSpec(name, str(function.get("description") or ""), parameters))
    return tuple(specs)


def check_tool_choice(request: GenRequest) -> None:
    """ValueError unless `tool_choice` is one of `TOOL_CHOICES`, and `tools` come without a
    constraint."""
    if request.tool_choice not in TOOL_CHOICES:
        raise ValueError(f"`tool_choice` must be one of {sorted(TOOL_CHOICES)}")
    if request.tools and request.constraint is not None:
        raise ValueError("`tools` cannot be combined with an output constraint")


def result_to_json(result: GenResult) -> dict[str, Any]:
    """A finished `/generate` answer: `{"text", "meta_info": {"prompt_tokens",
    "completion_tokens", "cached_tokens", "finish_reason": {"type", "kind"}}}`. `type` is
    SGLang's ("stop" for an end of turn too), `kind` ours ("eos" for an end of turn)."""
    kind = "stop" if result.finish_reason == "eos" else result.finish_reason
    return {
        "text": result.text,
        "meta_info": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "cached_tokens": result.cached_tokens,
            "finish_reason": {"type": kind, "kind": result.finish_reason},
            "tool_calls": [
                {"id": call.id, "name": call.name, "arguments": call.arguments}
                for call in result.tool_calls
            ],
            "logprobs": None
            if result.logprobs is None
            else [[t.text, t.logprob, [list(alt) for alt in t.top]] for t in result.logprobs],
            "reasoning": result.reasoning,
        },
    }


def result_from_json(data: Any) -> GenResult:
    """The inverse of `result_to_json` (an SGLang answer without `kind` or `cached_tokens`
    reads as well)."""
    try:
        meta = data["meta_info"]
        finish = meta["finish_reason"]
        return GenResult(
            str(data["text"]),
            str(finish.get("kind", finish["type"])),
            int(meta["prompt_tokens"]),
            int(meta["completion_tokens"]),
            int(meta.get("cached_tokens", 0)),
            tool_calls=tuple(
                ToolCall(str(call["id"]), str(call["name"]), dict(call["arguments"]))
                for call in meta.get("tool_calls", ())
            ),
            logprobs=_logprobs_from_json(meta.get("logprobs")),
            reasoning=meta.get("reasoning"),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"malformed `/generate` result ({type(exc).__name__}: {exc})") from None


def _logprobs_from_json(data: Any) -> tuple[TokenLogprob, ...] | None:
    """`result_to_json`'s `[text, logprob, [[text, logprob], ...]]` per token, back."""
    if data is None:
        return None
    return tuple(
        TokenLogprob(str(text), float(logprob), tuple((str(t), float(lp)) for t, lp in top))
        for text, logprob, top in data
    )


# -- through SGLang's router (docs/server.md, "The envelope") ---------------------------------

ENVELOPE_ROUTE = "/v1/completions"  # the route SGLang's router passes on with extra fields
ENVELOPE_KEY = "sgl"
# the native routes an envelope may carry, and their methods
ENVELOPE_PATHS = {
    "/generate": "POST",
    "/score": "POST",
    "/cache_prefix": "POST",
    "/get_model_info": "GET",
}
SERVER_MARKER = "sgl_lang_version"  # in `/get_model_info`: the server speaks this wire


def envelope(path: str, body: Mapping[str, Any], route_text: str) -> dict[str, Any]:
    """A native request (`path`, `body`) as a `/v1/completions` request, which SGLang's router
    passes to a worker with its extra fields kept: `prompt` is `route_text` (the router's
    cache-aware policy routes on it) and `stream` is the native request's."""
    return {
        "model": "",
        "prompt": route_text,
        "stream": bool(body.get("stream", False)),
        ENVELOPE_KEY: {"path": path, "body": dict(body)},
    }
