"""The `http://` backend's requests as a fake `sgl serve`, or a fake SGLang router over some,
receives them (the backend against the real server: tests/server/test_http_backend.py; through
the real router: tests/scale/test_replicas.py)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from fake_http import PNG, FakeAPI, json_reply, run_image_program

from sgl_lang.backends.http import HttpBackend
from sgl_lang.protocol import BackendError, GenRequest, Message, Prompt, Text
from sgl_lang.protocol.wire import SERVER_MARKER

META = {"prompt_tokens": 9, "completion_tokens": 2, "finish_reason": {"type": "stop"}}
SGL_MODEL_INFO = json_reply(200, {"model_path": "m", SERVER_MARKER: "0.1.0"})
DIRECT = (SGL_MODEL_INFO, json_reply(200, {"num_finished": 0}))  # a worker answers /stats
ROUTED = (SGL_MODEL_INFO, json_reply(404, {}))  # the router does not route /stats


def test_an_image_in_a_user_block_is_an_image_part(tmp_path: Path) -> None:
    with FakeAPI(*DIRECT, json_reply(200, {"text": "A cat", "meta_info": META})) as fake:
        state = run_image_program(HttpBackend(fake.url), tmp_path)
    assert state.variables["answer"] == "A cat"
    assert [(r.method, r.path) for r in fake.requests] == [
        ("POST", "/v1/completions"),
        ("GET", "/stats"),
        ("POST", "/generate"),
    ]
    assert fake.requests[0].body["sgl"] == {"path": "/get_model_info", "body": {}}
    [user, answer] = fake.requests[-1].body["prompt"]["segments"]
    assert user["role"] == "user"
    assert user["content"] == [
        {"type": "text", "text": "What is in this picture? "},
        {"type": "image", "data": base64.b64encode(PNG).decode()},
    ]
    assert answer == {"type": "message", "role": "assistant", "content": ""}


def test_through_a_router_every_request_goes_in_the_envelope() -> None:
    prompt = Prompt((Message("system", "Be brief."), Text("Q: sky?")), "assistant")
    answers = (
        json_reply(200, {"text": "Blue", "meta_info": META}),
        json_reply(200, {"scores": [0.5]}),
    )
    with FakeAPI(*ROUTED, *answers) as fake:
        backend = HttpBackend(fake.url)

        async def calls() -> tuple[str, list[float]]:
            result = await backend.generate(GenRequest(prompt, max_tokens=2))
            return result.text, await backend.score(prompt, ["x"], "normalized")

        assert asyncio.run(calls()) == ("Blue", [0.5])
    generate, score = fake.requests[2:]
    assert (generate.path, score.path) == ("/v1/completions", "/v1/completions")
    assert generate.body["prompt"] == score.body["prompt"] == prompt.plain_text()
    assert generate.body["stream"] is False
    assert generate.body["sgl"]["path"] == "/generate"
    assert generate.body["sgl"]["body"]["prompt"]["segments"][1] == {
        "type": "text",
        "text": "Q: sky?",
    }
    assert score.body["sgl"] == {
        "path": "/score",
        "body": {
            "prompt": score.body["sgl"]["body"]["prompt"],
            "choices": ["x"],
            "method": "normalized",
        },
    }


def test_a_server_that_is_not_sgl_is_a_plain_error_naming_the_openai_backend() -> None:
    with FakeAPI(json_reply(404, {"detail": "Not Found"})) as fake:
        backend = HttpBackend(fake.url)
        with pytest.raises(BackendError, match=rf"openai:MODEL@{fake.url}/v1"):
            asyncio.run(backend.generate(GenRequest(Prompt((Text("hi"),)))))
