"""The `gemini:` backend through the official `google-genai` SDK against a fake Gemini API (no
network): contents and roles, system instruction, images, structured and enum output,
streamed chunks, usage, errors and missing keys."""

from __future__ import annotations

import asyncio
import base64
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
from sgl_lang.backends.gemini import GeminiBackend
from sgl_lang.protocol import (
    BackendError,
    Choices,
    GenRequest,
    GenResult,
    Image,
    JsonSchema,
    Message,
    Prompt,
)


def reply(pieces: list[str], finish: str = "STOP", thought: tuple[bool, ...] = ()) -> Reply:
    """A streamed generateContent answer: one JSON response per piece, the last with usage
    (`thought`: which pieces are thoughts)."""
    chunks: list[tuple[str | None, Any]] = []
    for i, piece in enumerate(pieces):
        part = {"text": piece, "thought": thought[i] if i < len(thought) else False}
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}}
        chunk: dict[str, Any] = {"candidates": [candidate]}
        if i == len(pieces) - 1:
            candidate["finishReason"] = finish
            chunk["usageMetadata"] = {"promptTokenCount": 12, "candidatesTokenCount": 4,
                                      "cachedContentTokenCount": 8}  # fmt: skip
        chunks.append((None, chunk))
    return sse_reply(chunks)


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    with FakeAPI() as api:
        yield api


def backend_on(api: FakeAPI, *replies: Reply) -> GeminiBackend:
    api.replies.extend(replies)
    return GeminiBackend("gemini-test", "g-key", base_url=api.url)


def generate(
    backend: GeminiBackend, request: GenRequest, pieces: list[str] | None = None
) -> GenResult:
    return asyncio.run(backend.generate(request, None if pieces is None else pieces.append))


def test_contents_roles_system_and_images(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply(["Par", "is"]))
    prompt = Prompt(
        (
            Message("system", "Be brief."),
            Message("user", "Capital?"),
            Image(PNG),
            Message("assistant", "Of which country?"),
            Message("user", "France"),
        ),
        "assistant",
    )
    pieces: list[str] = []
    result = generate(backend, GenRequest(prompt, max_tokens=9, temperature=0), pieces)
    assert pieces == ["Par", "is"] and result.text == "Paris"
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("eos", 12, 4)
    assert result.cached_tokens == 8
    [request] = fake.requests
    assert request.path.endswith("/models/gemini-test:streamGenerateContent?alt=sse")
    assert request.headers["x-goog-api-key"] == "g-key"
    body = request.body
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    roles = [c["role"] for c in body["contents"]]
    assert roles == ["user", "model", "user"]
    text, image = body["contents"][0]["parts"]
    assert text == {"text": "Capital?"}
    inline = image["inlineData"]  # proto JSON: the API takes camelCase and snake_case
    assert inline["data"] == base64.b64encode(PNG).decode()
    assert inline.get("mimeType", inline.get("mime_type")) == "image/png"
    config = body["generationConfig"]
    assert config["maxOutputTokens"] == 9 and config["temperature"] == 0


def test_json_schema_and_enum_output(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply(['{"a": 1}']), reply(["no"], finish="MAX_TOKENS"))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    prompt = Prompt((Message("user", "Go"),))
    assert generate(backend, GenRequest(prompt, constraint=JsonSchema(schema))).text == '{"a": 1}'
    config = fake.requests[0].body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema
    result = generate(backend, GenRequest(prompt, constraint=Choices(("yes", "no"))))
    assert (result.text, result.finish_reason) == ("no", "length")
    config = fake.requests[1].body["generationConfig"]
    assert config["responseMimeType"] == "text/x.enum"
    assert config["responseSchema"] == {"type": "STRING", "enum": ["yes", "no"]}


def test_prefill_is_a_final_model_turn(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply([" 42"]))
    prompt = Prompt((Message("user", "6*7?"), Message("assistant", "It is")), "assistant")
    generate(backend, GenRequest(prompt, stop=("\n",)))
    body = fake.requests[0].body
    assert body["contents"][-1] == {"role": "model", "parts": [{"text": "It is"}]}
    assert body["generationConfig"]["stopSequences"] == ["\n"]


def test_api_errors_are_plain_backend_errors(fake: FakeAPI) -> None:
    error = {"error": {"code": 400, "message": "bad schema", "status": "INVALID_ARGUMENT"}}
    backend = backend_on(fake, json_reply(400, error))
    with pytest.raises(
        BackendError, match=r"gemini:gemini-test: the API answered 400:.*bad schema"
    ):
        generate(backend, GenRequest(Prompt((Message("user", "Hi"),))))


def test_a_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(BackendError, match=r"needs an API key: set \$GEMINI_API_KEY"):
        get_backend("gemini:gemini-test")
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    assert get_backend("gemini:gemini-test").capabilities.images


def test_reasoning_includes_the_thoughts_with_a_budget(fake: FakeAPI) -> None:
    backend = backend_on(fake, reply(["Small primes.", "Yes"], thought=(True, False)))
    prompt = Prompt((Message("user", "Is 7 prime?"),))
    result = generate(backend, GenRequest(prompt, reasoning=True, reasoning_budget=512))
    assert (result.text, result.reasoning) == ("Yes", "Small primes.")
    config = fake.requests[0].body["generationConfig"]
    # the SDK sends this object's fields in snake_case (proto JSON reads both spellings)
    thinking = {key.replace("_", "").lower(): v for key, v in config["thinkingConfig"].items()}
    assert thinking == {"includethoughts": True, "thinkingbudget": 512}


def test_an_image_in_a_user_block_is_an_image_part(fake: FakeAPI, tmp_path: Path) -> None:
    run_image_program(backend_on(fake, reply(["A cat"])), tmp_path)
    [user] = fake.requests[0].body["contents"]
    assert user["role"] == "user"
    text, image = user["parts"]
    assert text == {"text": "What is in this picture? "}
    inline = image["inlineData"]
    assert inline["data"] == base64.b64encode(PNG).decode()
    assert inline.get("mimeType", inline.get("mime_type")) == "image/png"


def test_tools_are_function_calls_and_responses(fake: FakeAPI) -> None:
    call = {"id": "fc_1", "name": "add", "args": {"a": 2, "b": 3}}
    candidate = {"content": {"role": "model", "parts": [{"functionCall": call}]},
                 "finishReason": "STOP"}  # fmt: skip
    calling = sse_reply([(None, {"candidates": [candidate]})])
    state = run_program(backend_on(fake, calling, reply(["5"])), TOOL_PROGRAM)
    assert state.variables["answer"] == "5"
    first, second = (request.body for request in fake.requests)
    [declaration] = first["tools"][0]["functionDeclarations"]
    assert declaration["name"] == "add" and declaration["description"] == "Add two numbers."
    schema = declaration.get("parametersJsonSchema", declaration.get("parameters_json_schema"))
    assert schema == ADD_PARAMETERS
    assert first["toolConfig"]["functionCallingConfig"]["mode"] == "AUTO"
    response = {"id": "fc_1", "name": "add", "response": {"result": "5"}}
    assert second["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": call}]},
        {"role": "user", "parts": [{"functionResponse": response}]},
    ]
