"""Tools a model may call: their specs, the calls and results that become message parts, and
the constrained form of a tool call for engines without native tool calling (one JSON
document, either a call of a listed tool with arguments valid for its schema, or the answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

TOOL_CHOICES = frozenset({"auto", "required", "none"})
"""`auto`: the model decides; `required`: it must call a tool; `none`: it must answer."""
ANSWER_KEY = "answer"


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model: `parameters` is the JSON Schema of its arguments object."""

    name: str
    description: str
    parameters: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        """The tool in OpenAI's `tools` format (chat templates take it too)."""
        function = {"name": self.name, "description": self.description}
        return {"type": "function", "function": {**function, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolCall:
    """A call the model made (a part of an assistant message); `arguments` is a JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]

    def as_json(self) -> str:
        """The call as the constrained form writes it: `{"name": ..., "arguments": {...}}`."""
        return json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False)


@dataclass(frozen=True)
class ToolResult:
    """What a call returned, as text (the part of a `tool` message); `call_id` is its call's id."""

    call_id: str
    name: str
    content: str


def tool_output_schema(tools: Sequence[ToolSpec], choice: str) -> dict[str, Any]:
    """The JSON Schema of the constrained form: a call `{"name": NAME, "arguments": ARGS}` of
    one of `tools` (ARGS valid for its `parameters`) or, unless `choice` is "required", an
    answer `{"answer": TEXT}` ("none": only the answer)."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in (tools if choice != "none" else ())
    ]
    answer = {
        "type": "object",
        "properties": {ANSWER_KEY: {"type": "string"}},
        "required": [ANSWER_KEY],
        "additionalProperties": False,
    }
    options = calls if choice == "required" else [*calls, answer]
    return options[0] if len(options) == 1 else {"anyOf": options}


class ToolOutput(NamedTuple):
    """A constrained output read back: the answer's text, or the call (then `answer` is "").
    `cut_call`: the output is the start of a call, cut short (by `max_tokens`)."""

    answer: str
    call: ToolCall | None
    cut_call: bool = False


def read_tool_output(text: str, call_id: str) -> ToolOutput:
    """The answer or the call (given `call_id`) in a constrained output. An answer cut at
    `max_tokens` is its text so far; other text (a call cut short) is the answer as it is."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        answer = _cut_answer(text)
        return ToolOutput(answer, None, cut_call=answer == text and text.lstrip().startswith("{"))
    if isinstance(document, dict) and isinstance(document.get(ANSWER_KEY), str):
        return ToolOutput(document[ANSWER_KEY], None)
    if (
        isinstance(document, dict)
        and isinstance(document.get("name"), str)
        and isinstance(document.get("arguments"), dict)
    ):
        return ToolOutput("", ToolCall(call_id, document["name"], document["arguments"]))
    return ToolOutput(text, None)


def _cut_answer(text: str) -> str:
    """The answer's text so far in `{"answer": "...` cut short; else `text`."""
    opening = re.match(r'\s*\{\s*"' + ANSWER_KEY + r'"\s*:\s*"', text)
    if opening is None:
        return text
    body = text[opening.end() :]
    for end in range(len(body), max(len(body) - 6, -1), -1):  # a cut escape is <= 6 chars
        try:
            return str(json.loads('"' + body[:end] + '"'))
        except json.JSONDecodeError:
            continue
    return text


def tools_instruction(tools: Sequence[ToolSpec], choice: str) -> str:
    """The system text that tells a model without native tool calling what it may call and
    how to write the constrained form."""
    listed = "\n".join(json.dumps(tool.as_openai()["function"]) for tool in tools)
    answer = (
        ""
        if choice == "required"
        else f' or, to answer without a tool, with {{"{ANSWER_KEY}": "your answer"}}'
    )
    return (
        f"You can call these tools:\n{listed}\n"
        'To call a tool, reply with {"name": "TOOL", "arguments": {...}}' + answer + "."
    )
