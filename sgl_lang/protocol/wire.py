"""The JSON of prompts, requests and results on the wire between the `http` backend and
`sgl serve`: a structured prompt, SGLang's `sampling_params` (plus `heal` and `choices`) and
SGLang's `meta_info`. Readers raise ValueError naming what is wrong."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from sgl_lang.protocol.constraints import Choices, Constraint, JsonSchema, Regex
from sgl_lang.protocol.prompts import Image, Message, Prompt, Segment, Text
from sgl_lang.protocol.requests import GenRequest, GenResult

ROLES = frozenset({"system", "user", "assistant"})
CONSTRAINT_FIELDS = ("regex", "json_schema", "choices")
DEFAULTS = GenRequest(Prompt(()))


def prompt_to_json(prompt: Prompt) -> dict[str, Any]:
    """`{"segments": [...], "open_role": ...}`; a segment is `{"type": "text", "text"}`,
    `{"type": "message", "role", "content"}` or `{"type": "image", "url" | "data"}` (data:
    base64 bytes)."""
    segments: list[dict[str, Any]] = []
    for segment in prompt.segments:
        if isinstance(segment, Text):
            segments.append({"type": "text", "text": segment.text})
        elif isinstance(segment, Message):
            segments.append({"type": "message", "role": segment.role, "content": segment.content})
        elif isinstance(segment.source, bytes):
            segments.append({"type": "image", "data": base64.b64encode(segment.source).decode()})
        else:
            segments.append({"type": "image", "url": segment.source})
    return {"segments": segments, "open_role": prompt.open_role}


def prompt_from_json(data: Any) -> Prompt:
    """The inverse of `prompt_to_json`."""
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise ValueError("`prompt` must be an object with a list of `segments`")
    segments: list[Segment] = []
    for i, item in enumerate(data["segments"]):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text" and isinstance(item.get("text"), str):
            segments.append(Text(item["text"]))
        elif (
            kind == "message" and item.get("role") in ROLES and isinstance(item.get("content"), str)
        ):
            segments.append(Message(item["role"], item["content"]))
        elif kind == "image" and isinstance(item.get("url"), str):
            segments.append(Image(item["url"]))
        elif kind == "image" and isinstance(item.get("data"), str):
            segments.append(Image(base64.b64decode(item["data"])))
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
    }
    constraint = request.constraint
    if isinstance(constraint, Regex):
        params["regex"] = constraint.pattern
    elif isinstance(constraint, JsonSchema):
        params["json_schema"] = json.dumps(constraint.schema)
    elif isinstance(constraint, Choices):
        params["choices"] = list(constraint.options)
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
    return GenRequest(
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
    )


def constraint_from_json(params: Mapping[str, Any]) -> Constraint | None:
    """The constraint of `sampling_params`: at most one of `regex`, `json_schema`, `choices`."""
    given = [name for name in CONSTRAINT_FIELDS if params.get(name) is not None]
    if len(given) > 1:
        raise ValueError("give at most one output constraint: `regex`, `json_schema` or `choices`")
    if "regex" in given:
        return Regex(params["regex"])
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
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"malformed `/generate` result ({type(exc).__name__}: {exc})") from None
