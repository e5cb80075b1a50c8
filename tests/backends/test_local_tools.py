"""Constrained tool calls on the real embedded SmolLM2: under `tool_choice` "required" every
output parses as one call that names a listed tool with arguments valid for its schema (20
varied prompts, decoded together with 10 under "auto"; `benchmarks/bench_tool_calls.py` runs 100 and compares with
unconstrained decoding), and under "auto" every output is such a call or an answer."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from sgl_lang.backends.local import LocalBackend
from sgl_lang.protocol import (
    BackendError,
    GenRequest,
    GenResult,
    Message,
    Prompt,
    ToolSpec,
    json_problem,
)

pytestmark = pytest.mark.model


def spec(name: str, description: str, **properties: dict) -> ToolSpec:
    schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    return ToolSpec(name, description, schema)


TEXT = {"type": "string", "maxLength": 24}
TOOLSETS = [
    (
        spec("get_weather", "Current weather in a city", city=TEXT),
        spec("calculate", "Value of an arithmetic expression", expression=TEXT),
    ),
    (
        spec(
            "search",
            "Search the web",
            query=TEXT,
            num_results={"type": "integer", "minimum": 1, "maximum": 10},
        ),
        spec(
            "convert",
            "Convert units",
            value={"type": "number"},
            unit={"enum": ["km", "mile", "kg", "pound"]},
        ),
        spec("send_email", "Send an email", to=TEXT, urgent={"type": "boolean"}),
    ),
]
QUESTIONS = [
    "What is the weather in Paris?",
    "How much is 17 times 23?",
    "Find recent news about Mars.",
    "Convert 26 miles to km.",
    "Email Bob that the meeting moved.",
    "Is it raining in Tokyo?",
    "What is 2 to the power of 10?",
    "Tell me a joke.",
    "How heavy is 5 pounds in kg?",
    "Search for pasta recipes.",
]


@pytest.fixture(scope="module")
def backend(local_backend: LocalBackend) -> LocalBackend:
    return local_backend


def generate_all(
    backend: LocalBackend, cases: list[tuple[tuple[ToolSpec, ...], str, str]]
) -> list[GenResult]:
    """The result of each (tools, question, tool_choice), all decoded concurrently."""

    async def one(tools: tuple[ToolSpec, ...], question: str, choice: str) -> GenResult:
        prompt = Prompt((Message("user", question),), "assistant")
        request = GenRequest(prompt, max_tokens=64, tools=tools, tool_choice=choice)
        return await backend.generate(request)

    async def every() -> list[GenResult]:
        return await asyncio.gather(*(one(*case) for case in cases))

    return asyncio.run(every())


def malformed(tools: tuple[ToolSpec, ...], result: GenResult) -> str | None:
    """Why `result` is not one valid call of a listed tool (None: it is)."""
    if result.finish_reason != "tool_calls" or len(result.tool_calls) != 1:
        return f"no call: {result.finish_reason} {result.text!r}"
    [call] = result.tool_calls
    schemas = {tool.name: tool.parameters for tool in tools}
    if call.name not in schemas:
        return f"unlisted tool {call.name!r}"
    return json_problem(call.arguments, schemas[call.name])


def test_tool_calls_always_parse_and_name_a_listed_tool(backend: LocalBackend) -> None:
    """20 prompts (every question with every tool set) under "required", and 10 under "auto"."""
    required = [(tools, q, "required") for tools, q in itertools.product(TOOLSETS, QUESTIONS)]
    auto = [(TOOLSETS[0], q, "auto") for q in QUESTIONS]
    results = generate_all(backend, required + auto)
    problems = [malformed(tools, r) for (tools, _, _), r in zip(required, results, strict=False)]
    assert [problem for problem in problems if problem is not None] == []
    for (tools, _, _), result in zip(auto, results[len(required) :], strict=True):
        if result.tool_calls:
            assert malformed(tools, result) is None
        else:
            assert result.finish_reason in ("eos", "length") and not result.text.startswith("{")


def test_a_call_cut_at_max_tokens_is_an_error_not_a_malformed_call(backend: LocalBackend) -> None:
    prompt = Prompt((Message("user", QUESTIONS[0]),), "assistant")
    request = GenRequest(prompt, max_tokens=6, tools=TOOLSETS[0], tool_choice="required")
    with pytest.raises(BackendError, match=r"tool call was cut at max_tokens \(6\)"):
        asyncio.run(backend.generate(request))
