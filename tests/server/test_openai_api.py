"""`sgl serve`'s OpenAI-compatible endpoints through the official `openai` client, and the
`openai:MODEL@URL` backend running a program against them; `echo` with prompt log-probs, and
`select` scored from them (`?select=logprobs`) as the `local` backend scores it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from sgl_lang.backends import get_backend
from sgl_lang.protocol import Choices, GenRequest, JsonSchema, Message, Prompt, Text
from sgl_lang.server.serving import ServedModel

pytestmark = pytest.mark.model

USER = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {argument: {"type": "string", "maxLength": 24}},
                "required": [argument],
                "additionalProperties": False,
            },
        },
    }
    for name, description, argument in (
        ("get_weather", "The current weather in a city", "city"),
        ("calculate", "The value of an arithmetic expression", "expression"),
    )
]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def client(live_server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="none", max_retries=0)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["smollm"]


def test_chat_completion_and_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm",
        messages=USER,
        max_tokens=10,
        temperature=0,  # type: ignore[arg-type]
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 10


def test_chat_completion_streams(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm",
        messages=USER,  # type: ignore[arg-type]
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions_and_json_schema_response_format(client: openai.OpenAI) -> None:
    done = client.completions.create(
        model="smollm", prompt="The capital of France is", max_tokens=3, temperature=0
    )
    assert done.choices[0].text.startswith(" Paris")
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    reply = client.chat.completions.create(
        model="smollm",
        messages=USER,  # type: ignore[arg-type]
        max_tokens=24,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert isinstance(json.loads(reply.choices[0].message.content or "")["city"], str)


def test_openai_errors_are_400s(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="`n` > 1 cannot be streamed"):
        client.chat.completions.create(model="smollm", messages=USER, n=2, stream=True)  # type: ignore[arg-type]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError, match="cannot see images"):
        client.chat.completions.create(
            model="smollm", messages=[{"role": "user", "content": [image]}]
        )
    with pytest.raises(openai.BadRequestError, match="`tool_choice` names `nope`"):
        client.chat.completions.create(
            model="smollm",
            messages=USER,
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )


def test_the_openai_backend_on_our_server(live_server: Any) -> None:
    backend = get_backend(f"openai:smollm@{live_server.url}/v1")
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

    async def calls() -> list[Any]:
        pieces: list[str] = []
        chat = await backend.generate(GenRequest(Prompt(tuple(
            Message(**m) for m in USER), "assistant"), max_tokens=10), pieces.append)  # fmt: skip
        text = await backend.generate(GenRequest(Prompt((Text("The capital of France is"),)), 3))
        choice = await backend.generate(
            GenRequest(Prompt((Message("user", "Capital of France?"),)), 24,
                       constraint=Choices(("Paris", "Rome"))), pieces.append)  # fmt: skip
        js = await backend.generate(
            GenRequest(Prompt((Message("user", "Capital of France?"),)), 24,
                       constraint=JsonSchema(schema)))  # fmt: skip
        prefill = await backend.generate(
            GenRequest(Prompt((*[Message(**m) for m in USER], Message("assistant", "It is")),
                              "assistant"), max_tokens=4))  # fmt: skip
        await backend.close()
        return [chat, "".join(pieces), text, choice, js, prefill]

    chat, pieces, text, choice, js, prefill = asyncio.run(calls())
    assert "Paris" in chat.text and pieces == chat.text + choice.text
    assert chat.prompt_tokens > 10 and chat.finish_reason in ("eos", "length")
    assert text.text.startswith(" Paris")
    assert choice.text in ("Paris", "Rome")
    assert isinstance(json.loads(js.text)["city"], str)
    assert prefill.text.startswith(" ")  # continues "It is", not a new message


def test_a_program_runs_on_openai_against_our_server(live_server: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sgl_lang.cli import main

    program = tmp_path / "capital.sgl"
    program.write_text(
        'user "What is the capital of France? Answer in one word."\n'
        "assistant gen answer(max_tokens=8)\n"
        'select city from ["Paris", "Rome"]\n'
        'print("answer:", answer)\n'
        'print("city:", city)\n'
    )
    uri = f"openai:smollm@{live_server.url}/v1"
    result = CliRunner().invoke(main, ["run", str(program), "--backend", uri])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output and "city: " in result.output


def test_echo_gives_the_prompt_tokens_log_probs(client: openai.OpenAI) -> None:
    prompt = "The capital of France is Paris"
    done = client.completions.create(
        model="smollm", prompt=prompt, max_tokens=0, echo=True, logprobs=1
    )
    choice = done.choices[0]
    assert choice.text == prompt and choice.logprobs is not None
    tokens, logprobs = choice.logprobs.tokens or [], choice.logprobs.token_logprobs or []
    assert "".join(tokens) == prompt and tokens[-1] == " Paris"
    assert logprobs[0] is None and all(lp is not None and lp <= 0 for lp in logprobs[1:])
    assert logprobs[-1] > -2  # " Paris" is likely here
    assert choice.logprobs.text_offset == [len("".join(tokens[:i])) for i in range(len(tokens))]
    assert done.usage is not None and done.usage.prompt_tokens == len(tokens)
    with pytest.raises(openai.BadRequestError, match="`echo` needs `max_tokens: 0`"):
        client.completions.create(model="smollm", prompt=prompt, max_tokens=2, echo=True)


def test_n_choices_with_generated_token_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm", messages=USER, max_tokens=6, temperature=0, n=2, logprobs=True,
        top_logprobs=2,
    )  # fmt: skip
    assert [choice.index for choice in reply.choices] == [0, 1]
    first, second = reply.choices
    assert first.message.content == second.message.content  # greedy: the same answer twice
    assert first.logprobs is not None and first.logprobs.content is not None
    tokens = first.logprobs.content
    assert "".join(token.token for token in tokens) == first.message.content
    for token in tokens:  # greedy: each token is the most likely of its step
        assert len(token.top_logprobs) == 2 and token.top_logprobs[0].token == token.token
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)
    assert reply.usage is not None and reply.usage.completion_tokens == 2 * len(tokens)
    prompt = "The capital of France is"
    done = client.completions.create(
        model="smollm", prompt=prompt, max_tokens=3, temperature=0, logprobs=1
    )
    logprobs = done.choices[0].logprobs
    assert logprobs is not None and "".join(logprobs.tokens or []) == done.choices[0].text
    echoed = client.completions.create(
        model="smollm", prompt=prompt + done.choices[0].text, max_tokens=0, echo=True, logprobs=1
    )  # the generated tokens' log-probs are those the prompt's scoring gives them
    assert echoed.choices[0].logprobs is not None
    scored = echoed.choices[0].logprobs.token_logprobs or []
    generated = logprobs.token_logprobs or []
    assert scored[-len(generated) :] == pytest.approx(generated, abs=1e-3)


@pytest.mark.parametrize("method", ["normalized", "greedy", "unconditional"])
def test_select_by_logprobs_agrees_with_local(
    live_server: Any, served: ServedModel, method: str
) -> None:
    remote = get_backend(f"openai:smollm@{live_server.url}/v1?select=logprobs")
    cases = [
        (Prompt((Text("The capital of France is "),)), ["Paris", "Berlin", "a big city"]),
        (Prompt((Text("2 + 2 ="),)), [" 4", " 5", " four"]),
        (Prompt((Text("Q: Is the sky blue?\nA:"),)), [" yes", " no"]),
    ]

    async def score_all(backend: Any) -> list[list[float]]:
        scores = [await backend.score(prompt, choices, method) for prompt, choices in cases]
        if backend is remote:
            await backend.close()
        return scores

    remote_scores = asyncio.run(score_all(remote))
    local_scores = asyncio.run(score_all(served.bridged))
    # the same log-probs; `unconditional` differs by its neutral context ("\n" vs BOS/EOS)
    tolerance = 1.0 if method == "unconditional" else 0.01
    for got, want in zip(remote_scores, local_scores, strict=True):
        assert got == pytest.approx(want, abs=tolerance)
        if method != "unconditional":
            assert got.index(max(got)) == want.index(max(want))


def test_a_program_selects_by_logprobs_on_our_server(live_server: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sgl_lang.cli import main

    program = tmp_path / "capital.sgl"
    program.write_text(
        '"The capital of France is "\n'
        'select city from ["Paris", "Berlin"]\n'
        'print(city, meta(city)["method"])\n'
    )
    uri = f"openai:smollm@{live_server.url}/v1?select=logprobs"
    result = CliRunner().invoke(main, ["run", str(program), "--backend", uri])
    assert result.exit_code == 0, result.output
    assert result.output == "Paris normalized\n"  # scored: no fallback, no warning


def test_tools_give_constrained_tool_calls_in_openai_format(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm",
        messages=WEATHER,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id
    name = call.function.name  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    argument = {"get_weather": "city", "calculate": "expression"}[name]
    assert list(arguments) == [argument] and isinstance(arguments[argument], str)
    named = client.chat.completions.create(
        model="smollm",
        messages=WEATHER,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "calculate"}},
        max_tokens=40,
    )
    assert [c.function.name for c in named.choices[0].message.tool_calls or []] == ["calculate"]  # type: ignore[union-attr]


def test_tool_calls_stream_and_a_tool_result_is_answered(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm",
        messages=WEATHER,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        max_tokens=40,
        stream=True,
    )
    chunks = [chunk.choices[0] for chunk in stream if chunk.choices]
    [delta] = [c.delta.tool_calls for c in chunks if c.delta.tool_calls]
    call = delta[0]
    assert (
        call.index == 0
        and call.function is not None
        and call.function.name in ("get_weather", "calculate")
    )
    assert chunks[-1].finish_reason == "tool_calls"
    wire_call = {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": call.function.arguments}}  # fmt: skip
    answer = client.chat.completions.create(
        model="smollm",
        messages=[
            *WEATHER,
            {"role": "assistant", "content": None, "tool_calls": [wire_call]},
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees"},
        ],  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        max_tokens=24,
    )
    choice = answer.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")
