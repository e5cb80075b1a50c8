"""The arguments of `gen` and `select`: their names (for static checks) and run-time validation."""

from __future__ import annotations

from typing import Any, NamedTuple

from sgl_lang import nodes
from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.objects import Schema
from sgl_lang.protocol import (
    SELECT_METHODS,
    TYPE_PATTERNS,
    Choices,
    GenRequest,
    JsonSchema,
    Prompt,
    Regex,
)
from sgl_lang.source import Span
from sgl_lang.tool_calls import DEFAULT_MAX_TOOL_CALLS, Tool, tools_of
from sgl_lang.values import to_repr, type_name

GEN_ARGUMENTS = frozenset(
    "max_tokens stop temperature top_p top_k min_p frequency_penalty presence_penalty seed "
    "ignore_eos regex json type choices heal tools max_tool_calls".split()
)
SELECT_ARGUMENTS = frozenset({"method"})
CONSTRAINT_ARGUMENTS = ("regex", "json", "type", "choices")


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
    if name == "tools":
        return {"tools": tools_of(value, span)}
    if name == "seed":
        return {"seed": None if value is None else _require(value, int, name, span)}
    if name in ("ignore_eos", "heal"):
        return {name: _require(value, bool, name, span)}
    if name in ("max_tokens", "top_k", "max_tool_calls"):
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
