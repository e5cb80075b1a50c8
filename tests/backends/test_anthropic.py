"""The `anthropic:` backend through the official SDK against a fake Messages API (no network):
request shapes (system, roles, content blocks, images, cache_control, prefill, structured
output), the streamed events, usage with cache reads, errors and missing keys."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_http import (
    ADD_PARAMETERS,
    PNG,
    TOOL_PROGRAM,
    FakeAPI,
    Reply,
    json_reply,
    run_image_program,
    run_program,
    sse_reply,
)

from sgl_lang.backends import get_backend
from sgl_lang.backends.anthropic import MIN_CACHED_CHARS, AnthropicBackend
from sgl_lang.protocol import (
    BackendError,
    Choices,
    GenRequest,
    GenResult,
    Image,
    JsonSchema,
    Message,
    Prompt,
    Text,
)


def reply(
    pieces: list[str], stop_reason: str = "end_turn", thinking: tuple[str, ...] = ()
) -> Reply:
    """A streamed Messages API answer, event by event as the API documents them (`thinking`:
    the deltas of a thinking block first)."""
    usage = {"input_tokens": 7, "output_tokens": 1, "cache_read_input_tokens": 20,
             "cache_creation_input_tokens": 3}  # fmt: skip
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
               "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}  # fmt: skip
    deltas = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        for p in pieces
    ]
    deltas[:0] = [
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": t}}
        for t in thinking
    ]  # fmt: skip
    events = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *deltas,
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 5},
        },
        {"type": "message_stop"},
    ]
    return sse_reply([(e["type"], e) for e in events])


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    with FakeAPI() as api:
        yield api


def backend_on(api: FakeAPI, *replies: Reply) -> AnthropicBackend:
    api.replies.extend(replies)
    return AnthropicBackend("claude-test", "sk-test", base_url=api.url, max_retries=0)


def generate(
    backend: AnthropicBackend, request: GenRequest, pieces: list[str] | None = None
) -> GenResult:
    return asyncio.run(backend.generate(request, None if pieces is None else pieces.append))


def test_messages_system_images_and_cache_control(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply(["Hel", "lo"]))
    prompt = Prompt(
        (
            Message("system", "Be brief."),
            Message("user", "Look:"),
            Image(PNG),
            Image("https://example.com/cat.jpg"),
            Text(" What is it?"),
        ),
        "assistant",
    )
    pieces: list[str] = []
    result = generate(backend, GenRequest(prompt, max_tokens=20, stop=("\n",)), pieces)
    assert pieces == ["Hel", "lo"] and result.text == "Hello"
    assert (result.finish_reason, result.prompt_tokens, result.cached_tokens) == ("eos", 30, 20)
    assert result.completion_tokens == 5
    [request] = fake.requests
    assert request.path == "/v1/messages"
    body = request.body
    assert body["model"] == "claude-test" and body["max_tokens"] == 20 and body["stream"] is True
    assert body["system"] == [{"type": "text", "text": "Be brief."}]
    assert body["stop_sequences"] == ["\n"]
    [user] = body["messages"]
    assert user["role"] == "user"
    text, image, url, question = user["content"]
    assert text == {"type": "text", "text": "Look:"}
    assert image["source"]["type"] == "base64" and image["source"]["media_type"] == "image/png"
    assert url["source"] == {"type": "url", "url": "https://example.com/cat.jpg"}
    assert question == {
        "type": "text",
        "text": " What is it?",
        "cache_control": {"type": "ephemeral"},
    }
    assert "sk-test" in (request.headers.get("x-api-key") or request.headers["authorization"])


def test_prefill_without_trailing_whitespace(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply([" 4", "2"], stop_reason="max_tokens"))
    prompt = Prompt((Message("user", "6*7?"), Message("assistant", "The answer is ")), "assistant")
    result = generate(backend, GenRequest(prompt, max_tokens=2))
    assert fake.requests[0].body["messages"][-1] == {
        "role": "assistant",
        "content": "The answer is",
    }
    assert (result.text, result.finish_reason) == ("42", "length")


def test_structured_outputs_for_json_and_choices(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply(['{"a": ', "1}"]), reply(['{"choice"', ': "no"}']))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    prompt = Prompt((Message("user", "Go"),))
    assert generate(backend, GenRequest(prompt, constraint=JsonSchema(schema))).text == '{"a": 1}'
    assert fake.requests[0].body["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
    pieces: list[str] = []
    result = generate(backend, GenRequest(prompt, constraint=Choices(("yes", "no"))), pieces)
    assert result.text == "no" and pieces == ["no"]
    enum = fake.requests[1].body["output_config"]["format"]["schema"]["properties"]["choice"][
        "enum"
    ]
    assert enum == ["yes", "no"]


def test_cache_prefix_prewarms_long_prefixes_only(fake: FakeAPI) -> None:
    backend = backend_on(fake, json_reply(200, {"id": "m", "type": "message", "role": "assistant", "content": [],
        "model": "claude-test", "stop_reason": "max_tokens", "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 0}}))  # fmt: skip
    asyncio.run(backend.cache_prefix(Prompt((Message("user", "short"),))))
    assert fake.requests == []
    asyncio.run(backend.cache_prefix(Prompt((Message("user", "x" * MIN_CACHED_CHARS),))))
    assert fake.requests[0].body["max_tokens"] == 0
    assert fake.requests[0].body["messages"][0]["content"][0]["cache_control"] == {
        "type": "ephemeral"
    }


def test_api_errors_are_plain_backend_errors(fake: FakeAPI) -> None:
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad model"}}
    backend = backend_on(fake, json_reply(400, error))
    with pytest.raises(BackendError, match="claude-test: the API answered 400: bad model"):
        generate(backend, GenRequest(Prompt((Message("user", "Hi"),))))


def test_a_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(BackendError, match=r"needs an API key: set \$ANTHROPIC_API_KEY"):
        get_backend("anthropic:claude-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    backend = get_backend("anthropic:claude-test")
    assert backend.capabilities.constraints == {"json", "choices"}
    assert not backend.capabilities.select_methods


def test_generating_inside_a_user_message_is_an_error(fake: FakeAPI) -> None:
    with pytest.raises(BackendError, match="only generate assistant messages"):
        generate(backend_on(fake), GenRequest(Prompt((Message("user", "Q: "),), "user")))


def test_reasoning_is_extended_thinking_with_a_budget(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply(["Yes."], thinking=("Two", " and two.")))
    prompt = Prompt((Message("user", "Is 2+2 four?"),), "assistant")
    request = GenRequest(prompt, max_tokens=50, reasoning=True, reasoning_budget=2000)
    result = generate(backend, request)
    assert (result.text, result.reasoning) == ("Yes.", "Two and two.")
    body = fake.requests[0].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert body["max_tokens"] == 2050


def test_an_image_in_a_user_block_is_an_image_part(fake: FakeAPI, tmp_path: Path) -> None:
    run_image_program(backend_on(fake, reply(["A cat"])), tmp_path)
    [user] = fake.requests[0].body["messages"]
    assert user["role"] == "user"
    text, image = user["content"]
    assert text == {"type": "text", "text": "What is in this picture? "}
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()}
    assert image == {"type": "image", "source": source, "cache_control": {"type": "ephemeral"}}


def tool_use_reply() -> Reply:
    """A streamed `tool_use` block calling `add`, its input in two JSON pieces."""
    usage = {"input_tokens": 7, "output_tokens": 1}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
               "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}  # fmt: skip
    block = {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {}}
    events = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": block},
        *(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": piece},
            }
            for piece in ('{"a": 2,', ' "b": 3}')
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    return sse_reply([(e["type"], e) for e in events])


def test_tools_are_tool_use_and_tool_result_blocks(fake: FakeAPI) -> None:
    state = run_program(backend_on(fake, tool_use_reply(), reply(["5"])), TOOL_PROGRAM)
    assert state.variables["answer"] == "5"
    first, second = (request.body for request in fake.requests)
    tool = {"name": "add", "description": "Add two numbers.", "input_schema": ADD_PARAMETERS}
    assert first["tools"] == [tool] and first["tool_choice"] == {"type": "auto"}
    call = {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 2, "b": 3}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "5",
              "cache_control": {"type": "ephemeral"}}  # fmt: skip
    assert second["messages"][1:] == [
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]
