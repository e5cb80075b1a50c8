"""Malformed tool calls on the embedded SmolLM2: constrained (our local backend) vs unconstrained.

    .venv/bin/python benchmarks/bench_tool_calls.py [--num-prompts 100] [--max-tokens 128]

Prompts are varied questions crossed with varied tool sets (strings, integers, numbers, enums,
booleans); each asks for a call (`tool_choice` "required"). The constrained run is the local
backend as programs use it (`bridge/tools.py`: the output held to "a call of a listed tool with
schema-valid arguments"). The baseline, in the same run, is the same prompt (the same tool
instruction) decoded without the constraint and read back the same way. All requests of a run
are in flight together, so the engine batches them. A call is malformed when it does not parse,
names no listed tool, or has arguments its schema rejects; one cut at `--max-tokens` is counted
apart (the local backend reports it as an error, "raise max_tokens", never as a call).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from dataclasses import replace

from rich.console import Console
from rich.table import Table

from sgl_lang.backends.local import LocalBackend
from sgl_lang.bridge.tools import constrained_request
from sgl_lang.protocol import (
    BackendError,
    GenRequest,
    GenResult,
    Message,
    Prompt,
    ToolSpec,
    json_problem,
    read_tool_output,
)

TEXT = {"type": "string", "maxLength": 24}


def spec(name: str, description: str, **properties: dict) -> ToolSpec:
    parameters = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    return ToolSpec(name, description, parameters)


TOOLSETS = [
    (spec("get_weather", "Current weather in a city", city=TEXT),),
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
    ),
    (
        spec("send_email", "Send an email", to=TEXT, subject=TEXT, urgent={"type": "boolean"}),
        spec("create_event", "Add a calendar event", title=TEXT, day={"type": "integer"}),
        spec("lookup", "Look a word up in the dictionary", word=TEXT),
    ),
    (spec("translate", "Translate text", text=TEXT, target={"enum": ["fr", "de", "es"]}),),
]
QUESTIONS = [
    "What is the weather in Paris?",
    "How much is 17 times 23?",
    "Find recent news about Mars.",
    "Convert 26 miles to km.",
    "Email Bob that the meeting moved to Friday.",
    "Is it raining in Tokyo right now?",
    "What is 2 to the power of 10?",
    "Tell me a joke.",
    "How heavy is 5 pounds in kg?",
    "Search for pasta recipes.",
    "Add lunch with Ana on the 12th to my calendar.",
    "What does 'ephemeral' mean?",
    "Translate 'good morning' to German.",
    "Should I take an umbrella in London?",
    "What is the square root of 144?",
    "Remind me to call the dentist.",
    "Who won the last world cup?",
    "Say thanks to the team by email.",
    "How many km is a marathon?",
    "Hi!",
]


def cases(num_prompts: int) -> list[tuple[tuple[ToolSpec, ...], str]]:
    """`num_prompts` (tool set, question) pairs, every tool set with every question first."""
    pairs = itertools.cycle(itertools.product(TOOLSETS, QUESTIONS))
    return list(itertools.islice(pairs, num_prompts))


def request(tools: tuple[ToolSpec, ...], question: str, max_tokens: int) -> GenRequest:
    prompt = Prompt((Message("user", question),), "assistant")
    return GenRequest(prompt, max_tokens=max_tokens, tools=tools, tool_choice="required")


CUT = "cut at max_tokens"


def problem(tools: tuple[ToolSpec, ...], result: GenResult | BackendError) -> str | None:
    """Why `result` is not one valid call of a listed tool (None: it is)."""
    if isinstance(result, BackendError):
        return CUT if "cut at max_tokens" in str(result) else str(result)
    calls = result.tool_calls
    if not calls:
        output = read_tool_output(result.text, "call")
        if output.cut_call and result.finish_reason == "length":
            return CUT
        call = output.call
        calls = () if call is None else (call,)
    if len(calls) != 1:
        return "no call"
    schemas = {tool.name: tool.parameters for tool in tools}
    if calls[0].name not in schemas:
        return "unlisted tool"
    return json_problem(calls[0].arguments, schemas[calls[0].name])


async def run(
    backend: LocalBackend, requests: list[GenRequest]
) -> tuple[list[GenResult | BackendError], float]:
    """Every request at once; a request the backend refuses gives its error."""

    async def one(request: GenRequest) -> GenResult | BackendError:
        try:
            return await backend.generate(request)
        except BackendError as exc:
            return exc

    started = time.perf_counter()
    results = await asyncio.gather(*(one(r) for r in requests))
    return list(results), time.perf_counter() - started


async def main(num_prompts: int, max_tokens: int) -> None:
    backend = LocalBackend()
    await backend.warm_up()
    pairs = cases(num_prompts)
    constrained = [request(tools, q, max_tokens) for tools, q in pairs]
    # The baseline: the same prompt, instruction included, with no constraint on the output.
    free = [replace(constrained_request(r), constraint=None) for r in constrained]
    table = Table(title=f"tool calls on SmolLM2, {num_prompts} prompts, tool_choice=required")
    for column in ("decoding", "prompts", "valid calls", "malformed", CUT, "wall s"):
        table.add_column(column, justify="right")
    for label, requests in (
        ("unconstrained (baseline)", free),
        ("constrained (local)", constrained),
    ):
        results, seconds = await run(backend, requests)
        problems = [problem(tools, r) for (tools, _), r in zip(pairs, results, strict=True)]
        num_cut = problems.count(CUT)
        num_malformed = sum(p is not None for p in problems) - num_cut
        num_valid = len(results) - num_malformed - num_cut
        row = (label, len(results), num_valid, num_malformed, num_cut, f"{seconds:.1f}")
        table.add_row(*map(str, row))
    Console().print(table)
    await backend.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=128)
    options = parser.parse_args()
    asyncio.run(main(options.num_prompts, options.max_tokens))
