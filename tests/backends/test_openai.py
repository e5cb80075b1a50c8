"""The `openai:` backend through the official SDK against a fake OpenAI API (no network): chat
and completion request shapes, images, response_format for json and choices, streamed
chunks with usage, errors and missing keys. (`tests/server/test_openai_api.py` runs it against
`sgl serve`.)"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from sgl_lang.backends.openai import OpenAIBackend
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
    TokenLogprob,
    choice_scores,
)


def reply(
    pieces: list[str], finish: str = "stop", chat: bool = True, extras: tuple[dict, ...] = ()
) -> Reply:
    """Streamed chunks, one per piece; `extras` update the first pieces' choices."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    head = {"id": "c1", "object": kind, "created": 0, "model": "gpt-test"}
    events: list[tuple[str | None, Any]] = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish if last else None}
        choice.update({"delta": {"content": piece}} if chat else {"text": piece})
        choice.update(extras[i] if i < len(extras) else {})
        events.append((None, {**head, "choices": [choice]}))
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
             "prompt_tokens_details": {"cached_tokens": 4}}  # fmt: skip
    events.append((None, {**head, "choices": [], "usage": usage}))
    reply = sse_reply(events)
    return reply._replace(body=reply.body + b"data: [DONE]\n\n")


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    with FakeAPI() as api:
        yield api


def backend_on(api: FakeAPI, *replies: Reply) -> OpenAIBackend:
    api.replies.extend(replies)
    return OpenAIBackend("gpt-test", api.url, "sk-test", max_retries=0)


def generate(
    backend: OpenAIBackend, request: GenRequest, pieces: list[str] | None = None
) -> GenResult:
    return asyncio.run(backend.generate(request, None if pieces is None else pieces.append))


def test_chat_messages_images_and_usage(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply(["Hi", " there"]))
    prompt = Prompt(
        (Message("system", "Be kind."), Message("user", "Look"), Image(b"\x89PNG..")),
        "assistant",
    )
    pieces: list[str] = []
    result = generate(backend, GenRequest(prompt, max_tokens=5, stop=("\n",)), pieces)
    assert pieces == ["Hi", " there"]
    assert result == GenResult("Hi there", "stop", 9, 2, 4)
    [request] = fake.requests
    assert request.path == "/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    body = request.body
    assert body["model"] == "gpt-test" and body["stream"] is True
    assert body["max_completion_tokens"] == 5 and body["stop"] == ["\n"]
    assert body["messages"][0] == {"role": "system", "content": "Be kind."}
    text, image = body["messages"][1]["content"]
    assert text == {"type": "text", "text": "Look"}
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    assert "top_k" not in body  # extensions only when set


def test_free_text_goes_to_completions(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply([" 4"], finish="length", chat=False))
    result = generate(backend, GenRequest(Prompt((Text("2+2="),)), max_tokens=1, top_k=5))
    assert (result.text, result.finish_reason) == (" 4", "length")
    body = fake.requests[0].body
    assert fake.requests[0].path == "/completions"
    assert body["prompt"] == "2+2=" and body["max_tokens"] == 1 and body["top_k"] == 5


def test_json_and_choices_through_response_format(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply(['{"a":', "1}"]), reply(['{"choice": "no"}']))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    prompt = Prompt((Message("user", "Go"),))
    assert generate(backend, GenRequest(prompt, constraint=JsonSchema(schema))).text == '{"a":1}'
    fmt = fake.requests[0].body["response_format"]
    assert fmt == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    pieces: list[str] = []
    result = generate(backend, GenRequest(prompt, constraint=Choices(("yes", "no"))), pieces)
    assert result.text == "no" and pieces == ["no"] and result.finish_reason == "eos"
    spec = fake.requests[1].body["response_format"]["json_schema"]
    assert spec["strict"] is True
    assert spec["schema"]["properties"]["choice"]["enum"] == ["yes", "no"]


def test_api_errors_are_plain_backend_errors(fake: FakeAPI) -> None:
    error = {"error": {"message": "model not found", "type": "invalid_request_error"}}
    backend = backend_on(fake, json_reply(404, error))
    with pytest.raises(BackendError, match="the API answered 404: model not found"):
        generate(backend, GenRequest(Prompt((Message("user", "Hi"),))))


def test_keys_and_uris(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match=r"needs an API key: set \$OPENAI_API_KEY"):
        get_backend("openai:gpt-test")
    backend = get_backend("openai:llama@http://127.0.0.1:8000/v1")  # a local server: no key
    assert backend.name == "openai:llama@http://127.0.0.1:8000/v1"
    assert backend.capabilities.constraints == {"json", "choices"}
    with pytest.raises(BackendError, match="needs a model"):
        get_backend("openai:@http://127.0.0.1:8000/v1")


def echo_reply(tokens: list[str], logprobs: list[float | None]) -> Reply:
    """A /completions answer to `echo` with `logprobs` (vLLM's shape)."""
    echoed = {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None,
              "text_offset": [sum(map(len, tokens[:i])) for i in range(len(tokens))]}  # fmt: skip
    choice = {"index": 0, "text": "".join(tokens), "finish_reason": "length", "logprobs": echoed}
    head = {"id": "c1", "object": "text_completion", "created": 0, "model": "gpt-test"}
    return json_reply(200, {**head, "choices": [choice]})


def scoring_backend_on(api: FakeAPI, *replies: Reply) -> OpenAIBackend:
    api.replies.extend(replies)
    return OpenAIBackend("gpt-test", api.url, "sk-test", scores=True, max_retries=0)


def test_select_scores_from_echoed_prompt_logprobs(fake: FakeAPI) -> None:
    replies = {  # by prompt: the two choices are scored concurrently
        "Capital: Paris": echo_reply(["Capital", ":", " Par", "is"], [None, -1.0, -0.5, -0.1]),
        "Capital: Rome": echo_reply(["Capital", ":", " Rome"], [None, -1.0, -2.0]),
    }
    backend = scoring_backend_on(fake)
    fake.reply_for = lambda body: replies[body["prompt"]]
    prompt = Prompt((Text("Capital: "),))
    scores = asyncio.run(backend.score(prompt, ["Paris", "Rome"], "normalized"))
    assert scores == [-0.3, -2.0]  # the mean over the choice's tokens
    bodies = sorted((r.body for r in fake.requests), key=lambda body: body["prompt"])
    assert [body["prompt"] for body in bodies] == ["Capital: Paris", "Capital: Rome"]
    assert bodies[0]["echo"] is True and bodies[0]["logprobs"] == 1
    assert bodies[0]["max_tokens"] == 0 and bodies[0]["temperature"] == 0


def test_unconditional_subtracts_the_choice_after_a_neutral_context(fake: FakeAPI) -> None:
    backend = scoring_backend_on(fake, *[echo_reply(["x", " A"], [None, -1.0])] * 4)
    asyncio.run(backend.score(Prompt((Text("Q: "),)), ["A", "B"], "unconditional"))
    prompts = sorted(r.body["prompt"] for r in fake.requests)
    assert prompts == ["\n A", "\n B", "Q: A", "Q: B"]
    # the scoring is the protocol's; unconditional log-probs may be tokenized differently
    uncond = choice_scores("unconditional", [[-1.0, -1.0], [-3.0]], [[-0.5], [-2.0, -4.0]])
    assert uncond == [-0.5, 0.0]
    assert choice_scores("greedy", [[-1.0, -1.0], [-0.5]]) == [-1.0, 0.0]


def test_scoring_is_an_option_and_needs_a_text_prompt(fake: FakeAPI) -> None:
    assert get_backend("openai:m@http://127.0.0.1:8000/v1").capabilities.select_methods == set()
    backend = get_backend("openai:m@http://127.0.0.1:8000/v1?select=logprobs")
    assert backend.capabilities.select_methods == {"normalized", "greedy", "unconditional"}
    assert backend.name == "openai:m@http://127.0.0.1:8000/v1"
    with pytest.raises(BackendError, match="unknown option `logprobs`"):
        get_backend("openai:m@http://127.0.0.1:8000/v1?logprobs")
    chat = Prompt((Message("user", "Pick one."),), "assistant")
    with pytest.raises(BackendError, match="only after prompts without messages"):
        asyncio.run(scoring_backend_on(fake).score(chat, ["a", "b"], "normalized"))


def test_a_server_without_prompt_logprobs_is_a_plain_error(fake: FakeAPI) -> None:
    no_logprobs = echo_reply(["Hi", " a"], [None, -1.0])
    body = json.loads(no_logprobs.body)
    body["choices"][0]["logprobs"] = None
    backend = scoring_backend_on(fake, json_reply(200, body))
    with pytest.raises(BackendError, match="gave no log-probs of the prompt's tokens"):
        asyncio.run(backend.score(Prompt((Text("Hi "),)), ["a"], "normalized"))


def test_logprobs_reasoning_and_min_tokens_on_chat(fake: FakeAPI) -> None:
    def token(text: str, logprob: float) -> dict[str, Any]:
        top = [{"token": text, "logprob": logprob}, {"token": "x", "logprob": logprob - 2}]
        return {"token": text, "logprob": logprob, "top_logprobs": top}

    chunks = reply(
        ["", "Yes"],
        extras=(
            {"delta": {"content": "", "reasoning_content": "It is."}},
            {"logprobs": {"content": [token("Yes", -0.5)]}},
        ),
    )
    backend = backend_on(fake, chunks)
    prompt = Prompt((Message("user", "Is it?"),), "assistant")
    request = GenRequest(prompt, logprobs=2, reasoning=True, min_tokens=1)
    pieces: list[str] = []
    result = generate(backend, request, pieces)
    assert (result.text, result.reasoning, pieces) == ("Yes", "It is.", ["Yes"])
    assert result.logprobs == (TokenLogprob("Yes", -0.5, (("Yes", -0.5), ("x", -2.5))),)
    body = fake.requests[0].body
    assert (body["logprobs"], body["top_logprobs"], body["min_tokens"]) == (True, 2, 1)


def test_a_think_block_is_the_reasoning_without_a_reasoning_field(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply(["<think>Sum", " it.</think>", " 4"], chat=False))
    request = GenRequest(Prompt((Text("2+2="),)), reasoning=True, logprobs=0)
    result = generate(backend, request)
    assert (result.text, result.reasoning, result.logprobs) == ("4", "Sum it.", ())
    assert fake.requests[0].body["logprobs"] == 0


def test_an_image_in_a_user_block_is_an_image_part(fake: FakeAPI, tmp_path: Path) -> None:
    run_image_program(backend_on(fake, reply(["A cat"])), tmp_path)
    [user] = fake.requests[0].body["messages"]
    assert user["role"] == "user"
    text, image = user["content"]
    assert text == {"type": "text", "text": "What is in this picture? "}
    expected = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert image == {"type": "image_url", "image_url": {"url": expected}}


def tool_call_reply() -> Reply:
    """A streamed call of `add`: the id and name first, then the arguments in two pieces."""
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "gpt-test"}
    function = {"name": "add", "arguments": '{"a": 2,'}
    first = {"index": 0, "id": "call_1", "type": "function", "function": function}
    second = {"index": 0, "function": {"arguments": ' "b": 3}'}}
    events: list[tuple[str | None, Any]] = [
        (None, {**head, "choices": [{"index": 0, "delta": {"tool_calls": [first]}}]}),
        (
            None,
            {
                **head,
                "choices": [
                    {"index": 0, "delta": {"tool_calls": [second]}, "finish_reason": "tool_calls"}
                ],
            },
        ),
    ]
    streamed = sse_reply(events)
    return streamed._replace(body=streamed.body + b"data: [DONE]\n\n")


def test_tools_are_native_tool_calls_and_tool_messages(fake: FakeAPI) -> None:
    state = run_program(backend_on(fake, tool_call_reply(), reply(["5"])), TOOL_PROGRAM)
    assert state.variables["answer"] == "5"
    assert state.meta["answer"]["tool_calls"] == [
        {"name": "add", "arguments": {"a": 2, "b": 3}, "result": "5"}
    ]
    first, second = (request.body for request in fake.requests)
    function = {"name": "add", "description": "Add two numbers.", "parameters": ADD_PARAMETERS}
    assert first["tools"] == [{"type": "function", "function": function}]
    assert first["tool_choice"] == "auto"
    assert first["messages"] == [{"role": "user", "content": "What is 2 + 3?"}]
    call = {"name": "add", "arguments": '{"a": 2, "b": 3}'}
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": call}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]
