"""`gen NAME(tools=[...])` on the test backend (which honours tools): the loop of calls and
results, `max_tool_calls`, tool errors and permissions, how tools are described, the argument
checks, and backends without tools refused before the run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sgl_lang import runner
from sgl_lang.backends.test import Reply, TestBackend
from sgl_lang.errors import SglError
from sgl_lang.grammar import parse_text
from sgl_lang.interpreter import Interpreter
from sgl_lang.protocol import (
    Capabilities,
    Message,
    ToolCall,
    ToolOutput,
    ToolResult,
    read_tool_output,
)
from sgl_lang.state import State

TOOLS = """\
import calc

# Evaluate an arithmetic expression.
def calculate(expression):
    return calc.evaluate(expression)

schema City:
    city: str

def weather(city, unit="C"):
    "(a def's strings would append to the state: tools run on a copy)"
    return "sunny in {city}"
"""


def call(name: str, **arguments: object) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def run(source: str, *replies: str) -> tuple[State, TestBackend]:
    backend = TestBackend([Reply(text) for text in replies])
    state = asyncio.run(Interpreter(backend).run_program(parse_text(TOOLS + source, "t.sgl")))
    return state, backend


def test_the_model_calls_tools_until_it_answers() -> None:
    source = (
        'user "What is 6*7, and the weather in Oslo?"\n'
        "assistant gen answer(tools=[calculate, tool(weather, parameters=City)], max_tokens=8)\n"
    )
    state, backend = run(
        source, call("calculate", expression="6*7"), call("weather", city="Oslo"), "Done."
    )
    assert state.variables["answer"] == "Done."
    assert state.meta["answer"]["tool_calls"] == [
        {"name": "calculate", "arguments": {"expression": "6*7"}, "result": "42"},
        {"name": "weather", "arguments": {"city": "Oslo"}, "result": "sunny in Oslo"},
    ]
    messages = [s for s in state.prompt().segments if isinstance(s, Message)]
    assert [m.role for m in messages] == [
        "user", "assistant", "tool", "assistant", "tool", "assistant",
    ]  # fmt: skip
    [first_call] = messages[1].tool_calls
    assert (first_call.name, first_call.arguments) == ("calculate", {"expression": "6*7"})
    assert messages[2].content == (ToolResult(first_call.id, "calculate", "42"),)
    assert messages[5].text == "Done."
    [first, *_] = backend.requests
    calculate, weather = first.tools
    assert calculate.description == "Evaluate an arithmetic expression."
    assert calculate.parameters["required"] == ["expression"]
    assert weather.parameters == {
        "title": "City",
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    assert [r.tool_choice for r in backend.requests] == ["auto"] * 3
    assert all(not isinstance(p, ToolCall) for p in messages[5].content)


def test_after_max_tool_calls_the_model_must_answer() -> None:
    source = 'user "Go"\nassistant gen answer(tools=[calculate], max_tool_calls=2, max_tokens=16)\n'
    state, backend = run(source, *[call("calculate", expression="1+1")] * 3)
    assert [r.tool_choice for r in backend.requests] == ["auto", "auto", "none"]
    assert len(state.meta["answer"]["tool_calls"]) == 2
    assert state.variables["answer"] == call("calculate", expression="1+1")  # answered as text


def test_a_failing_tool_returns_its_error_and_an_unknown_tool_is_named() -> None:
    source = 'user "Go"\nassistant gen answer(tools=[calculate], max_tokens=16)\n'
    state, _ = run(source, call("calculate", expression="1+"), "ok")
    [failed] = state.meta["answer"]["tool_calls"]
    assert failed["result"].startswith("error: ")
    state, _ = run(source, call("nope"), "ok")
    assert state.meta["answer"]["tool_calls"] == []  # a call of an unlisted tool is an answer
    assert state.variables["answer"] == call("nope")


def test_a_tool_needing_a_permission_the_run_lacks_stops_the_program(tmp_path: Path) -> None:
    source = (
        "import files\n"
        "def read(path):\n"
        "    return files.read(path)\n"
        'user "Read it"\n'
        "assistant gen answer(tools=[read], max_tokens=4)\n"
    )
    with pytest.raises(SglError, match="reading files needs --allow-read"):
        run(source, call("read", path=str(tmp_path / "x.txt")))
    with pytest.raises(SglError, match="`fils` is not defined"):  # a bug, not a result
        run(source.replace("files.read", "fils.read"), call("read", path="x.txt"))


def test_standard_library_functions_are_described_by_their_signature_and_doc() -> None:
    source = 'user "Go"\nassistant gen answer(tools=[len, tool(max, description="Largest")])\n'
    _, backend = run(source, "fine")
    length, largest = backend.requests[0].tools
    assert length.name == "len" and length.description
    assert largest.description == "Largest"


def test_the_drawn_calls_of_the_test_backend_are_valid_calls() -> None:
    """Without canned replies, calls are drawn from the constrained form: listed tools only."""
    source = (
        'user "Go"\nassistant gen answer(tools=[tool(weather, parameters=City)], max_tokens=4)\n'
    )
    backend = TestBackend()
    program = parse_text(TOOLS + source, "t.sgl")
    state = asyncio.run(Interpreter(backend).run_program(program))
    for made in state.meta["answer"]["tool_calls"]:
        assert made["name"] == "weather" and isinstance(made["arguments"]["city"], str)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('assistant gen a(tools=[calculate], json={"type": "object"})', "`tools` and `json`"),
        ("assistant gen a(tools=calculate)", "`tools` must be a non-empty list"),
        ("assistant gen a(tools=[1])", "a tool must be a function, not `int`"),
        ("assistant gen a(tools=[calculate, calculate])", "two tools are named `calculate`"),
        ("user gen a(tools=[calculate])", "must be inside an `assistant` message"),
        ("assistant gen a(tools=[tool(calculate, parameters=1)])", "`parameters` must be a schema"),
    ],
)
def test_bad_tools_arguments_are_located_errors(line: str, message: str) -> None:
    with pytest.raises(SglError, match=message) as caught:
        run(line + "\n")
    assert caught.value.span is not None


def test_a_backend_without_tools_refuses_them_before_the_run(tmp_path: Path) -> None:
    program = tmp_path / "p.sgl"
    program.write_text(TOOLS + "assistant gen a(tools=[calculate])\n")
    backend = TestBackend()
    backend.capabilities = Capabilities(frozenset(), frozenset())
    loader = runner.Loader()
    errors = runner.program_capability_errors(loader, loader.load(program), backend)
    assert [e.render().splitlines()[0] for e in errors] == [
        f"{program}:13:11: backend error: backend `test` cannot offer tools to the model"
    ]


def test_the_example_of_the_language_reference_runs() -> None:
    reference = (Path(__file__).parents[1] / "docs" / "language.md").read_text()
    example = reference.split("### Tools", 1)[1].split("```sgl\n", 1)[1].split("```", 1)[0]
    reply = call("conversion_factor", unit="mile")
    backend = TestBackend([Reply(reply), Reply("About 42.2 km.")])
    state = asyncio.run(Interpreter(backend).run_program(parse_text(example, "language.md")))
    assert state.variables["answer"] == "About 42.2 km."
    assert state.meta["answer"]["tool_calls"][0]["result"] == "1.609344"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"answer": "Hi there"}', ToolOutput("Hi there", None)),
        ('{"answer": "Hi th', ToolOutput("Hi th", None)),  # an answer cut by max_tokens
        ('{"answer": "caf\\u00', ToolOutput("caf", None)),  # cut inside an escape
        ('{"name": "add", "arguments": {"a": 1}}', ToolOutput("", ToolCall("c", "add", {"a": 1}))),
        ('{"name": "add", "argu', ToolOutput('{"name": "add", "argu', None, cut_call=True)),
        ("plain text", ToolOutput("plain text", None)),
    ],
)
def test_constrained_outputs_read_back(text: str, expected: ToolOutput) -> None:
    assert read_tool_output(text, "c") == expected
