"""The `http://` backend against an in-process `sgl serve` on the real SmolLM2: the same results
as the `local` backend on the same engine, streaming, constraints, scoring, prefix hints,
100 concurrent requests over shared prefixes, errors, and example programs run end to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sgl_lang.backends import get_backend
from sgl_lang.backends.http import HttpBackend
from sgl_lang.protocol import (
    BackendError,
    Choices,
    GenRequest,
    GenResult,
    Grammar,
    Image,
    JsonSchema,
    Message,
    Prompt,
    Regex,
    Text,
    ToolSpec,
)
from sgl_lang.protocol.wire import prompt_from_json, prompt_to_json
from sgl_lang.server.serving import ServedModel

pytestmark = pytest.mark.model

QUESTION = Prompt((Message("user", "What is the capital of France?"),), "assistant")
EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
def backend(transport: httpx.ASGITransport) -> Iterator[HttpBackend]:
    yield HttpBackend("http://sgl", transport=transport)


def test_prompts_round_trip_through_the_wire_format() -> None:
    prompt = Prompt(
        (Text("a"), Message("system", "b"), Image("x.png"), Image(b"\x89PNG")), "assistant"
    )
    assert prompt_from_json(json.loads(json.dumps(prompt_to_json(prompt)))) == prompt


def test_generate_matches_local_on_the_same_engine(
    backend: HttpBackend, served: ServedModel
) -> None:
    requests = [
        GenRequest(QUESTION, max_tokens=8),
        GenRequest(Prompt((Text("The answer is "),)), max_tokens=4),  # healed
        GenRequest(Prompt((Text("Count: 1, 2,"),)), max_tokens=12, stop=(", 5",)),
    ]
    for request in requests:
        remote = asyncio.run(backend.generate(request))
        local = asyncio.run(served.bridged.generate(request))
        assert (remote.text, remote.finish_reason) == (local.text, local.finish_reason)
        assert remote.prompt_tokens == local.prompt_tokens


def test_the_optional_gen_features_and_grammars_match_local(
    backend: HttpBackend, served: ServedModel
) -> None:
    arith = 'start: NUMBER (("+" | "-") NUMBER)*\nNUMBER: /[0-9]{1,3}/\n'
    requests = [
        GenRequest(QUESTION, max_tokens=6, logprobs=2),
        GenRequest(
            Prompt((Text("Count: 1, 2,"),)),
            max_tokens=12,
            min_tokens=2,
            stop_regex="[0-9]+,",
            include_stop=True,
        ),
        GenRequest(Prompt((Text("Seven plus six is "),)), max_tokens=8, constraint=Grammar(arith)),
        GenRequest(QUESTION, max_tokens=12, reasoning=True),
    ]
    assert all(backend.capabilities.missing_options(r) == [] for r in requests)
    for request in requests:
        remote = asyncio.run(backend.generate(request))
        local = asyncio.run(served.bridged.generate(request))
        assert (remote.text, remote.finish_reason) == (local.text, local.finish_reason)
        assert remote.logprobs == local.logprobs and remote.reasoning == local.reasoning
    logprobs = asyncio.run(backend.generate(requests[0])).logprobs
    assert logprobs is not None and len(logprobs) > 0 and all(len(t.top) == 2 for t in logprobs)


def test_generate_streams_pieces_that_add_up(backend: HttpBackend) -> None:
    pieces: list[str] = []
    result = asyncio.run(backend.generate(GenRequest(QUESTION, max_tokens=8), pieces.append))
    assert len(pieces) > 1 and "".join(pieces) == result.text
    assert "Paris" in result.text


def test_constraints_are_enforced(backend: HttpBackend) -> None:
    def gen(constraint: Any) -> str:
        return asyncio.run(backend.generate(GenRequest(QUESTION, 24, constraint=constraint))).text

    assert gen(Regex("[A-Z][a-z]+")).isalpha()
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert isinstance(json.loads(gen(JsonSchema(schema)))["city"], str)
    assert gen(Choices(("Paris", "Lyon"))) in ("Paris", "Lyon")


def test_score_and_cache_prefix(backend: HttpBackend) -> None:
    prompt = Prompt((Text("The capital of France is "),))
    scores = asyncio.run(backend.score(prompt, ["Paris", "Berlin"], "normalized"))
    assert scores[0] > scores[1]
    asyncio.run(backend.cache_prefix(prompt))
    cached = asyncio.run(backend.generate(GenRequest(prompt, max_tokens=1, heal=False)))
    assert cached.cached_tokens >= cached.prompt_tokens - 1


CAPITALS = {"France": "Paris", "Italy": "Rome", "Japan": "Tokyo", "Germany": "Berlin",
            "Spain": "Madrid", "Egypt": "Cairo", "Russia": "Moscow", "England": "London",
            "China": "Beijing", "Greece": "Athens"}  # fmt: skip


def test_100_concurrent_clients_with_shared_prefixes_share_the_cache(
    live_server: Any, served: ServedModel
) -> None:
    """100 requests at once (each on its own connection), 25 on each of 4 long instructions:
    every answer is right, and all but the first on each instruction read it from the cache."""
    instructions = ["Answer with one word. ", "You are a geography quiz. ",
                    "Short answers only, please. ", "Facts about the world follow. "]  # fmt: skip
    countries = (list(CAPITALS) * 3)[:25]
    questions = [
        (instruction * 8, country) for instruction in instructions for country in countries
    ]
    backend = get_backend(live_server.url)

    async def ask_all() -> list[GenResult]:
        prompts = [Prompt((Text(f"{p}The capital of {c} is"),)) for p, c in questions]
        requests = [GenRequest(prompt, max_tokens=2, heal=False) for prompt in prompts]
        results = await asyncio.gather(*(backend.generate(r) for r in requests))
        await backend.close()
        return results

    before = served.engine.stats()
    results = asyncio.run(ask_all())
    after = served.engine.stats()
    for (_, country), result in zip(questions, results, strict=True):
        assert result.text.startswith(f" {CAPITALS[country]}"), (country, result.text)
    prefix_lens = [len(prefix.split()) for prefix, _ in questions]  # fewer words than tokens
    num_hits = sum(r.cached_tokens >= n for r, n in zip(results, prefix_lens, strict=True))
    assert num_hits >= len(questions) - len(instructions)
    num_prompt = after.num_prompt_tokens - before.num_prompt_tokens
    num_cached = after.num_cached_tokens - before.num_cached_tokens
    assert num_cached / num_prompt > 0.8


def test_server_errors_become_backend_errors(backend: HttpBackend) -> None:
    with pytest.raises(BackendError, match=r"answered 400: .*context"):
        asyncio.run(backend.generate(GenRequest(Prompt((Text("word " * 9000),)), max_tokens=2)))
    with pytest.raises(BackendError, match=r"answered 400: .*method"):
        asyncio.run(backend.score(QUESTION, ["a"], "best"))


def test_an_unreachable_server_is_a_plain_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sgl_lang.backends.http.NUM_CONNECT_RETRIES", 0)
    backend = get_backend("http://127.0.0.1:9")
    with pytest.raises(BackendError, match=r"cannot reach the sgl server at http://127\.0\.0\.1:9"):
        asyncio.run(backend.generate(GenRequest(QUESTION, max_tokens=2)))


@pytest.mark.parametrize("example", ["classify.sgl", "json_extract.sgl"])
def test_example_programs_run_on_the_server(live_server: Any, example: str) -> None:
    from click.testing import CliRunner

    from sgl_lang.cli import main

    args = ["run", str(EXAMPLES / example), "--backend", live_server.url]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "name: Paris" in result.output or "label: negative" in result.output


def test_tools_reach_the_server_and_come_back_as_calls(backend: HttpBackend) -> None:
    parameters = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}},
        "required": ["city"],
        "additionalProperties": False,
    }
    tools = (ToolSpec("get_weather", "The weather in a city", parameters),)
    prompt = Prompt((Message("user", "What is the weather in Paris?"),), "assistant")
    request = GenRequest(prompt, max_tokens=40, tools=tools, tool_choice="required")
    result = asyncio.run(backend.generate(request))
    [call] = result.tool_calls
    assert result.finish_reason == "tool_calls" and result.text == ""
    assert call.name == "get_weather" and isinstance(call.arguments["city"], str)
