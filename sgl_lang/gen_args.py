"""The arguments of `gen` and `select`: their names (for static checks) and run-time validation."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from sgl_lang import nodes
from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.objects import Schema
from sgl_lang.protocol import (
    SELECT_METHODS,
    TYPE_PATTERNS,
    Choices,
    GenRequest,
    GenResult,
    Grammar,
    JsonSchema,
    Prompt,
    Regex,
)
from sgl_lang.source import Span
from sgl_lang.tool_calls import DEFAULT_MAX_TOOL_CALLS, Tool, tools_of
from sgl_lang.user_grammars import grammar_error
from sgl_lang.values import to_repr, type_name

GEN_ARGUMENTS = frozenset(
    "max_tokens stop temperature top_p top_k min_p frequency_penalty presence_penalty seed "
    "ignore_eos regex json type choices heal grammar min_tokens stop_regex include_stop "
    "logprobs reasoning tools max_tool_calls".split()
)
SELECT_ARGUMENTS = frozenset({"method"})
CONSTRAINT_ARGUMENTS = ("regex", "json", "type", "choices", "grammar")
# `gen` arguments -> the `Capabilities.gen_options` feature they need
OPTION_ARGUMENTS = ("min_tokens", "stop_regex", "include_stop", "logprobs", "reasoning")
MAX_LOGPROBS = 20  # top alternatives per token: OpenAI's and the engine's limit


class GenArgs(NamedTuple):
    """A `gen`'s validated arguments: the request to send (its prompt still empty), for
    `type=` the name of the type the output converts to, and the `tools=` the model may call
    (at most `max_tool_calls` calls, `tool_calls.py`)."""

    request: GenRequest
    type_name: str | None
    tools: tuple[Tool, ...] = ()
    max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS


def conflicting_constraints(names: list[str]) -> list[str]:
    """The constraint arguments given together (at most one is allowed)."""
    given = [name for name in CONSTRAINT_ARGUMENTS if name in names]
    return given if len(given) > 1 else []


def check_gen_args(
    node: nodes.Gen, values: dict[str, Any], builtins: dict[str, Any], default_max_tokens: int
) -> GenArgs:
    """Validate evaluated `gen` arguments; errors point at the offending argument."""
    spans = {kw.name: kw.span for kw in node.args if kw.name}
    fields: dict[str, Any] = {
        "max_tokens": default_max_tokens,
        "type_name": None,
        "tools": (),
        "max_tool_calls": DEFAULT_MAX_TOOL_CALLS,
    }
    for name, value in values.items():
        span = spans[name]
        if name not in GEN_ARGUMENTS:
            raise SglTypeError(f"`gen` has no argument `{name}`", span)
        fields.update(_check_one(name, value, span, builtins))
    conflict = conflicting_constraints(list(values))
    if conflict:
        raise SglValueError(
            f"`{conflict[0]}` and `{conflict[1]}` cannot be used together", spans[conflict[1]]
        )
    if fields.get("min_tokens") and fields.get("constraint") is not None:
        raise SglValueError(
            "`min_tokens` cannot be used with a constraint (the constraint decides where the "
            "output ends)",
            spans["min_tokens"],
        )
    constraint = next((name for name in CONSTRAINT_ARGUMENTS if name in values), None)
    if "tools" in values and constraint is not None:
        message = f"`tools` and `{constraint}` cannot be used together"
        raise SglValueError(message, spans[constraint])
    type_name, tools = fields.pop("type_name"), fields.pop("tools")
    max_tool_calls = fields.pop("max_tool_calls")
    return GenArgs(GenRequest(Prompt(()), **fields), type_name, tools, max_tool_calls)


def _check_one(name: str, value: Any, span: Span, builtins: dict[str, Any]) -> dict[str, Any]:
    if name == "stop":
        return {"stop": _stop(value, span)}
    if name == "regex":
        return {"constraint": Regex(_require(value, str, name, span))}
    if name == "json":
        return {"constraint": JsonSchema(_json_schema(value, span))}
    if name == "choices":
        return {"constraint": Choices(_choices(value, span))}
    if name == "type":
        kind = _type(value, span, builtins)
        return {"constraint": Regex(TYPE_PATTERNS[kind]), "type_name": kind}
    if name == "grammar":
        return {"constraint": Grammar(_grammar(value, span))}
    if name in ("stop_regex", "logprobs") and value is None:
        return {name: None}
    if name == "stop_regex":
        return {"stop_regex": _stop_regex(value, span)}
    if name == "logprobs":
        return {"logprobs": _logprobs(value, span)}
    if name == "tools":
        return {"tools": tools_of(value, span)}
    if name == "seed":
        return {"seed": None if value is None else _require(value, int, name, span)}
    if name == "reasoning":
        return _reasoning(value, span)
    if name in ("ignore_eos", "heal", "include_stop"):
        return {name: _require(value, bool, name, span)}
    if name in ("max_tokens", "top_k", "min_tokens", "max_tool_calls"):
        number = _require(value, int, name, span)
        if number < 0:
            raise SglValueError(f"`{name}` must be >= 0, not {number}", span)
        return {name: number}
    number = _require(value, float, name, span)
    if name in ("top_p", "min_p") and not 0 <= number <= 1:
        raise SglValueError(f"`{name}` must be between 0 and 1, not {number}", span)
    if name == "temperature" and number < 0:
        raise SglValueError(f"`temperature` must be >= 0, not {number}", span)
    return {name: float(number)}


def _require(value: Any, kind: type, name: str, span: Span) -> Any:
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        wanted = {str: "str", int: "int", float: "number", bool: "bool"}[kind]
        raise SglTypeError(f"`{name}` must be a {wanted}, not `{type_name(value)}`", span)
    return value


def _stop(value: Any, span: Span) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise SglTypeError("`stop` must be a non-empty string or a list of them", span)
    return tuple(items)


def _grammar(value: Any, span: Span) -> str:
    source = _require(value, str, "grammar", span)
    if problem := grammar_error(source):
        raise SglValueError(f"invalid grammar: {problem}", span)
    return str(source)


def _stop_regex(value: Any, span: Span) -> str:
    pattern = _require(value, str, "stop_regex", span)
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise SglValueError(f"invalid `stop_regex` {to_repr(pattern)}: {exc}", span) from None
    if compiled.fullmatch(""):
        raise SglValueError("`stop_regex` must not match the empty string", span)
    return str(pattern)


def _reasoning(value: Any, span: Span) -> dict[str, Any]:
    """`reasoning=true`/`false`, or a budget: the most tokens of reasoning (reasoning on)."""
    if isinstance(value, bool):
        return {"reasoning": value}
    if isinstance(value, int) and value > 0:
        return {"reasoning": True, "reasoning_budget": value}
    raise SglTypeError(
        f"`reasoning` must be a bool or a budget of tokens (an int > 0), not {to_repr(value)}",
        span,
    )


def _logprobs(value: Any, span: Span) -> int:
    number = _require(value, int, "logprobs", span)
    if not 0 <= number <= MAX_LOGPROBS:
        raise SglValueError(f"`logprobs` must be between 0 and {MAX_LOGPROBS}, not {number}", span)
    return int(number)


def _json_schema(value: Any, span: Span) -> dict[str, Any]:
    if isinstance(value, Schema):
        return value.json_schema()
    if isinstance(value, dict):
        return value
    raise SglTypeError(
        f"`json` needs a schema or a JSON Schema dict, not `{type_name(value)}`", span
    )


def _choices(value: Any, span: Span) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise SglTypeError("`choices` must be a non-empty list of strings", span)
    return tuple(value)


def _type(value: Any, span: Span, builtins: dict[str, Any]) -> str:
    for kind in ("int", "float", "bool"):
        if value is builtins.get(kind) or value == kind:
            return kind
    raise SglTypeError(f"`type` must be int, float or bool, not {to_repr(value)}", span)


def gen_meta(result: GenResult, request: GenRequest) -> dict[str, Any]:
    """What `meta(NAME)` returns for a `gen`: its counts and finish reason; with `logprobs`,
    one `{"token", "logprob", "top"}` per generated token (`top`: text -> log-prob of the
    most likely tokens at that step); with `reasoning`, the reasoning text (none if the
    model wrote none)."""
    meta: dict[str, Any] = {
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cached_tokens": result.cached_tokens,
    }
    if request.logprobs is not None:
        meta["logprobs"] = [
            {"token": token.text, "logprob": token.logprob, "top": _top(token.top)}
            for token in result.logprobs or ()
        ]
    if request.reasoning:
        meta["reasoning"] = result.reasoning
    return meta


def _top(alternatives: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """Text -> log-prob, most likely first; of two tokens with the same text the likelier."""
    top: dict[str, float] = {}
    for text, logprob in alternatives:
        top.setdefault(text, logprob)
    return top


def check_select_args(node: nodes.Select, values: dict[str, Any]) -> str:
    """Validate a `select`'s arguments; returns its scoring method."""
    spans = {kw.name: kw.span for kw in node.args if kw.name}
    for name in values:
        if name not in SELECT_ARGUMENTS:
            raise SglTypeError(f"`select` has no argument `{name}`", spans[name])
    method = values.get("method", "normalized")
    if method not in SELECT_METHODS:
        raise SglValueError(
            f"`method` must be one of {', '.join(map(repr, SELECT_METHODS))}, not {to_repr(method)}",
            spans.get("method"),
        )
    return str(method)
