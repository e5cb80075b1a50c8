"""`gen NAME(tools=[...])`: the tools a model may call, how each is described to it, and the
loop that runs the model's calls until it answers (docs/language.md, "Tools").

A tool is a `def` (described by its parameters and the `#` comment block above it) or a
standard-library function (its parameters and doc string); `tool(f, parameters=S,
description=D)` gives its arguments a schema `S` and overrides the description. Each round the
model either answers (the loop ends, the answer binds NAME) or calls tools: the calls are
appended to the open assistant message, each is run (on a copy of the state, under the run's
permissions; an error in its arguments is its result, for the model to read) and its result appended as a
`tool` message, and a new assistant message is
opened for the next round. After `max_tool_calls` calls the model is asked to answer.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sgl_lang.errors import SglLimitError, SglTypeError, SglValueError
from sgl_lang.objects import Function, Schema
from sgl_lang.protocol import GenResult, ToolCall, ToolResult, ToolSpec
from sgl_lang.source import Span
from sgl_lang.state import State
from sgl_lang.values import to_repr, type_name

if TYPE_CHECKING:
    from sgl_lang.gen_args import GenArgs

DEFAULT_MAX_TOOL_CALLS = 8
TOOL_ROLE = "tool"
ANY_SCALAR = {"type": ["string", "number", "boolean"]}
"""The schema of a parameter without one: a small model writes scalars reliably."""


@dataclass(frozen=True)
class Tool:
    """A function the model may call (`function`: a `def` or a Python callable) and the spec
    it is offered with."""

    function: Any
    spec: ToolSpec

    type_name = "tool"

    def __str__(self) -> str:
        return f"<tool {self.spec.name}>"


def make_tool(function: Any, parameters: Any = None, description: Any = None) -> Tool:
    """The `tool(f, parameters=S, description=D)` built-in: `f` offered with the JSON Schema
    of its arguments `S` (a `schema` or a dict) and the description `D`."""
    schema = parameters.json_schema() if isinstance(parameters, Schema) else parameters
    if schema is not None and not isinstance(schema, dict):
        raise SglTypeError(
            f"`parameters` must be a schema or a dict, not `{type_name(parameters)}`"
        )
    if description is not None and not isinstance(description, str):
        raise SglTypeError(f"`description` must be a str, not `{type_name(description)}`")
    base = _tool(function, None)
    spec = ToolSpec(
        base.spec.name,
        base.spec.description if description is None else description,
        base.spec.parameters if schema is None else schema,
    )
    return Tool(function, spec)


def tools_of(value: Any, span: Span | None) -> tuple[Tool, ...]:
    """The `tools=` argument: a non-empty list of functions or `tool(...)`s, names unique."""
    if not isinstance(value, list) or not value:
        raise SglTypeError("`tools` must be a non-empty list of functions", span)
    tools = tuple(item if isinstance(item, Tool) else _tool(item, span) for item in value)
    names = [tool.spec.name for tool in tools]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise SglValueError(f"two tools are named `{twice}`", span)
    return tools


def _tool(function: Any, span: Span | None) -> Tool:
    if isinstance(function, Function):
        node = function.node
        names = [param.name for param in node.params]
        required = [param.name for param in node.params if param.default is None]
        return Tool(function, ToolSpec(node.name, node.doc or "", _parameters(names, required)))
    if callable(function) and not isinstance(function, (Schema, type)):
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            params = [
                p
                for p in signature.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            names = [p.name for p in params]
            required = [p.name for p in params if p.default is p.empty]
            name = getattr(function, "__name__", "tool").strip("_")
            doc = (inspect.getdoc(function) or "").split("\n\n")[0]
            return Tool(function, ToolSpec(name, doc, _parameters(names, required)))
    raise SglTypeError(f"a tool must be a function, not `{type_name(function)}`", span)


def _parameters(names: list[str], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: ANY_SCALAR for name in names},
        "required": required,
        "additionalProperties": False,
    }


# ---------------------------------------------------------------- the loop

Generate = Callable[["GenArgs"], Awaitable[tuple[GenResult, Any]]]
CallTool = Callable[[Tool, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class ToolRound:
    """One call the model made and what the tool returned (for `meta(NAME).tool_calls`)."""

    call: ToolCall
    result: str


async def generate_with_tools(
    args: GenArgs, state: State, generate: Generate, call_tool: CallTool
) -> tuple[GenResult, Any, list[ToolRound]]:
    """Generate until the model answers (see the module docstring); the answer's result and
    value, and the calls made on the way."""
    if state.open_role != "assistant":
        raise SglValueError("`gen` with `tools` must be inside an `assistant` message")
    specs = tuple(tool.spec for tool in args.tools)
    by_name = {tool.spec.name: tool for tool in args.tools}
    rounds: list[ToolRound] = []
    while True:
        choice = "auto" if len(rounds) < args.max_tool_calls else "none"
        request = replace(args.request, prompt=state.prompt(), tools=specs, tool_choice=choice)
        result, value = await generate(args._replace(request=request))
        if not result.tool_calls or choice == "none":
            return result, value, rounds
        state.append(result.text, generated=True)
        for call in result.tool_calls:
            state.append_tool_part(call)
        state.close_message()
        for call in result.tool_calls:
            content = await _run(by_name, call, call_tool)
            rounds.append(ToolRound(call, content))
            state.open_message(TOOL_ROLE)
            state.append_tool_part(ToolResult(call.id, call.name, content))
            state.close_message()
        state.open_message("assistant")


async def _run(by_name: dict[str, Tool], call: ToolCall, call_tool: CallTool) -> str:
    """The tool's result as text (JSON for data). A call of an unknown tool (an API model may
    make one), or one that fails on its arguments (a type or value error), gets the error as
    its result, for the model to read; other errors (a permission the run lacks, a limit, a
    bug in the tool) stop the program, as anywhere else."""
    tool = by_name.get(call.name)
    if tool is None:
        return f"error: there is no tool `{call.name}` (tools: {', '.join(by_name)})"
    try:
        value = await call_tool(tool, call.arguments)
    except SglLimitError:
        raise
    except (SglTypeError, SglValueError) as error:
        return f"error: {error.message}"
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return to_repr(value)
