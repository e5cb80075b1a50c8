"""The envelope on the real SmolLM2: a native request inside a `/v1/completions` request (how
the `http` backend goes through SGLang's router) is answered exactly as the native route
answers it, streamed or not, behind the same API key; a malformed envelope is a 400."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
import pytest
from test_native import FRANCE, greedy, post

import sgl_lang
from sgl_lang.protocol import Prompt, Text
from sgl_lang.protocol.wire import SERVER_MARKER, envelope, prompt_to_json
from sgl_lang.server.app import create_app
from sgl_lang.server.serving import ServedModel

pytestmark = pytest.mark.model

RUN_FIELDS = frozenset({"id", "cached_tokens", "e2e_latency"})
PROMPT = prompt_to_json(Prompt((Text(FRANCE),)))
NATIVE_REQUESTS = [
    ("/generate", {"prompt": PROMPT, "sampling_params": greedy(3)}),
    ("/generate", {"text": FRANCE, "sampling_params": greedy(2), "stream": True}),
    ("/score", {"prompt": PROMPT, "choices": [" Paris", " Rome"], "method": "normalized"}),
    ("/cache_prefix", {"text": FRANCE}),
]


@pytest.mark.parametrize(("path", "body"), NATIVE_REQUESTS, ids=lambda v: str(v)[:20])
def test_an_enveloped_request_is_answered_as_the_native_route_answers_it(
    transport: httpx.ASGITransport, path: str, body: dict[str, Any]
) -> None:
    native = post(transport, path, body)
    enveloped = post(transport, "/v1/completions", envelope(path, body, FRANCE))
    assert enveloped.status_code == native.status_code == 200
    assert enveloped.headers["content-type"] == native.headers["content-type"]
    assert _same(_answer(enveloped), _answer(native))


def _same(answer: Any, expected: Any) -> bool:
    """Equal, floats within 1e-5 relative: a score computed over a cached prefix, or in a step
    shaped differently, may differ in the last digits (the matmuls' blocking follows the rows)."""
    if isinstance(answer, float) and isinstance(expected, float):
        return math.isclose(answer, expected, rel_tol=1e-5)
    if isinstance(answer, dict) and isinstance(expected, dict):
        return answer.keys() == expected.keys() and all(
            _same(answer[k], expected[k]) for k in answer
        )
    if isinstance(answer, list) and isinstance(expected, list):
        return len(answer) == len(expected) and all(map(_same, answer, expected))
    return bool(answer == expected)


def test_an_enveloped_get_model_info_names_the_wire(transport: httpx.ASGITransport) -> None:
    enveloped = post(transport, "/v1/completions", envelope("/get_model_info", {}, ""))
    assert enveloped.status_code == 200
    assert enveloped.json()[SERVER_MARKER] == sgl_lang.__version__


def _answer(response: httpx.Response) -> Any:
    """The JSON answer, or the streamed events (comparable parts)."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        return _comparable(response.json())
    lines = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    return [line if line == "[DONE]" else _comparable(json.loads(line)) for line in lines]


def _comparable(answer: Any) -> Any:
    """`answer` without what differs between two runs (`RUN_FIELDS` of its `meta_info`)."""
    if isinstance(answer, dict) and "meta_info" in answer:
        meta = {k: v for k, v in answer["meta_info"].items() if k not in RUN_FIELDS}
        return {**answer, "meta_info": meta}
    return answer


def test_a_malformed_envelope_is_a_400_naming_the_paths(transport: httpx.ASGITransport) -> None:
    for inner in ({"path": "/flush_cache", "body": {}}, {"path": "/score", "body": []}, "x"):
        response = post(transport, "/v1/completions", {"model": "", "prompt": "", "sgl": inner})
        assert response.status_code == 400
        assert "`sgl" in response.json()["error"]["message"]


def test_the_native_route_checks_the_enveloped_body(transport: httpx.ASGITransport) -> None:
    body = {"prompt": PROMPT, "sampling_params": {"temperature": 5}}
    native = post(transport, "/generate", body)
    enveloped = post(transport, "/v1/completions", envelope("/generate", body, FRANCE))
    assert native.status_code == enveloped.status_code == 400
    assert native.json() == enveloped.json()


def test_the_envelope_needs_the_api_key(served: ServedModel) -> None:
    transport = httpx.ASGITransport(app=create_app(served, api_key="sekret"))
    request = envelope("/cache_prefix", {"text": FRANCE}, FRANCE)

    async def send(headers: dict[str, str]) -> int:
        async with httpx.AsyncClient(transport=transport, base_url="http://sgl") as client:
            return (await client.post("/v1/completions", json=request, headers=headers)).status_code

    assert asyncio.run(send({})) == 401
    assert asyncio.run(send({"Authorization": "Bearer sekret"})) == 200
