"""The `vllm` backend on the real embedded SmolLM2, vLLM started once for the module: a program
with gen, regex, JSON, select and fork gives the greedy answers of `local`; streaming, stops,
finish reasons, prefix-cache hits and select scores match what `local` reports."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from typing import Any

import pytest

from sgl_lang.backends import get_backend
from sgl_lang.backends.local import LocalBackend
from sgl_lang.backends.vllm import VllmBackend
from sgl_lang.bridge.options import EngineOptions
from sgl_lang.bridge.registry import close_engines
from sgl_lang.bridge.vllm_engine import close_vllm_engines
from sgl_lang.grammar import parse_text
from sgl_lang.interpreter import Interpreter
from sgl_lang.protocol import (
    SELECT_METHODS,
    Backend,
    BackendError,
    Choices,
    GenRequest,
    Message,
    Prompt,
    Regex,
    Text,
)
from sgl_lang.state import State
from sgl_lang.stdlib import builtins

pytestmark = pytest.mark.model

SMALL_KV = EngineOptions(kv_cache_gb=0.5)  # ~11k tokens: more than the model's 8192 context

PROGRAM = """
system "You are a concise assistant."
user "What is the capital of France?"
assistant gen capital(max_tokens=12, stop="\\n")
user "Pick a number between 100 and 999."
assistant gen number(regex="[1-9][0-9]{2}", max_tokens=6)
user "Extract the city in this text as JSON.\\n\\nParis is the capital of France."
assistant gen city(json={"type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"}}, "required": ["name", "country"], "additionalProperties": false}, max_tokens=40)
user "Is Paris in Europe?"
assistant select yes_no from ["Yes", "No"]
facts = fork topic in ["food", "art"]:
    user "Name one thing Paris is known for in {topic}, in a few words."
    assistant gen fact(max_tokens=10, stop="\\n")
print(capital, "|", number, "|", city, "|", yes_no, "|", [f.fact for f in facts])
"""


@pytest.fixture(scope="module")
def vllm_backend() -> Iterator[Backend]:
    pytest.importorskip("vllm")
    backend = get_backend("vllm:", engine_options=SMALL_KV)
    asyncio.run(backend.warm_up())
    yield backend
    close_vllm_engines()


@pytest.fixture(scope="module")
def local_backend() -> Iterator[LocalBackend]:
    yield LocalBackend()
    close_engines()


def run_program(backend: Backend, source: str) -> tuple[dict[str, Any], str]:
    """The program's variables and what it printed."""
    printed = io.StringIO()
    interpreter = Interpreter(backend, default_max_tokens=16)

    async def go() -> State:
        token = builtins.output.set(printed)
        try:
            return await interpreter.run_program(parse_text(source, "<vllm-test>"))
        finally:
            builtins.output.reset(token)

    state = asyncio.run(go())
    return {**interpreter.scope.vars, **state.variables}, printed.getvalue()


def test_a_program_gives_local_greedy_answers_on_vllm(
    vllm_backend: Backend, local_backend: LocalBackend
) -> None:
    values, printed = run_program(vllm_backend, PROGRAM)
    local_values, printed_locally = run_program(local_backend, PROGRAM)
    assert printed == printed_locally
    assert values["capital"] == "The capital of France is Paris."
    assert re.fullmatch("[1-9][0-9]{2}", values["number"])
    assert values["city"]["name"] == "Paris"
    assert values["yes_no"] in ("Yes", "No")
    facts = [fact.attributes["fact"] for fact in values["facts"]]
    assert facts == [fact.attributes["fact"] for fact in local_values["facts"]] and all(facts)


def test_streaming_stops_and_finish_reasons(vllm_backend: Backend) -> None:
    count = Prompt((Message("user", "Count from 1 to 9."),), "assistant")
    hello = Prompt((Message("user", "Say hi."),), "assistant")

    async def go() -> list[tuple[str, str, str]]:
        results = []
        for request in (
            GenRequest(count, max_tokens=24),
            GenRequest(count, max_tokens=24, stop=("5",)),
            GenRequest(hello, max_tokens=40),
        ):
            pieces: list[str] = []
            result = await vllm_backend.generate(request, pieces.append)
            results.append(("".join(pieces), result.text, result.finish_reason))
        return results

    full, stopped, ended = asyncio.run(go())
    assert full[0] == full[1] and full[2] == "length" and "5" in full[1]
    assert stopped == (full[1].split("5")[0], full[1].split("5")[0], "stop")
    assert ended[0] == ended[1] and ended[1] and ended[2] == "eos"


def test_constraints_hold_and_a_shared_prefix_is_cached(vllm_backend: Backend) -> None:
    shared = Text("Facts about the planets of the solar system. " * 40)

    async def go() -> list[tuple[str, int]]:
        year = Regex("19[0-9]{2}")
        planet = Choices(("Mars", "Venus"))
        requests = [
            GenRequest(Prompt((shared, Text("Year: "))), max_tokens=8, constraint=year),
            GenRequest(Prompt((shared, Text("Planet: "))), max_tokens=8, constraint=planet),
        ]
        results = [await vllm_backend.generate(request) for request in requests]
        return [(r.text, r.cached_tokens) for r in results]

    (year, _), (planet, num_cached) = asyncio.run(go())
    assert re.fullmatch("19[0-9]{2}", year)
    assert planet in ("Mars", "Venus")
    assert num_cached >= 256  # the shared ~400 tokens, in whole vLLM blocks


def test_select_scores_match_local(vllm_backend: Backend, local_backend: LocalBackend) -> None:
    prompt = Prompt((Text("The capital of France is "),))
    choices = ["Paris", "a city in Europe"]

    async def go(backend: Backend) -> list[list[float]]:
        return [await backend.score(prompt, choices, method) for method in SELECT_METHODS]

    on_vllm, on_local = asyncio.run(go(vllm_backend)), asyncio.run(go(local_backend))
    for scores, local_scores in zip(on_vllm, on_local, strict=True):
        assert scores == pytest.approx(local_scores, abs=1e-3)
    assert on_vllm[0][0] > on_vllm[0][1]


def test_a_refused_request_fails_alone_and_a_closed_backend_refuses(vllm_backend: Backend) -> None:
    too_long = GenRequest(Prompt((Text("hello " * 9000),)), max_tokens=2)
    with pytest.raises(BackendError, match=r"^vLLM: \S"):
        asyncio.run(vllm_backend.generate(too_long))
    other = VllmBackend(None, SMALL_KV)
    asyncio.run(other.close())
    with pytest.raises(BackendError, match="closed"):
        asyncio.run(other.generate(GenRequest(Prompt((Text("x"),)))))
    request = GenRequest(Prompt((Text("1, 2, 3,"),)), max_tokens=2)
    assert asyncio.run(vllm_backend.generate(request)).completion_tokens == 2
