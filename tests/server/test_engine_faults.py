"""`sgl serve` on the real SmolLM2 when a request is poisoned (ids outside the vocabulary, a
hostile regex, a schema that requires itself): that request gets a 400 in the error shape and
the server goes on; /health and every request are 503 with the error shape once the engine
cannot serve."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from sgl_lang.runtime.cache_integrity import IntegrityError
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.model_loader import LoadedModel
from sgl_lang.runtime.model_runner import ForwardBatch
from sgl_lang.server.app import create_app
from sgl_lang.server.serving import ServedModel

pytestmark = pytest.mark.model

FRANCE = "The capital of France is"
GREEDY = {"max_new_tokens": 3, "temperature": 0}
SELF_REF_SCHEMA = {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}
REQUIRES_ITSELF = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}


def call(
    transport: httpx.ASGITransport, method: str, path: str, body: Any = None
) -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://sgl") as client:
            return await client.request(method, path, json=body)

    return asyncio.run(send())


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        # ids outside the vocabulary are refused by the server's bounds before the engine's check
        ("/generate", {"input_ids": [-1]}, "input_ids.0: Input should be greater than or equal"),
        ("/generate", {"input_ids": [1, 2, 10**12]}, "input_ids.2: Input should be less than"),
        ("/cache_prefix", {"input_ids": [5, 49152]}, "token id 49152 is not in the vocabulary"),
        (
            "/generate",
            {"text": "a", "sampling_params": {**GREEDY, "regex": "a{1000000}"}},
            "the constraint failed at output token 1",
        ),
        (
            "/generate",
            {"text": "a", "sampling_params": {**GREEDY, "json_schema": SELF_REF_SCHEMA}},
            "invalid json constraint: no output can start to match it",
        ),
        (
            "/generate",
            {"text": "{", "sampling_params": {**GREEDY, "json_schema": REQUIRES_ITSELF}},
            "the constraint failed",
        ),
    ],
    ids=["negative-id", "huge-id", "cache-prefix-id", "hostile-regex", "self-ref", "requires-self"],
)
def test_a_poisoned_request_is_a_400_and_the_server_goes_on(
    transport: httpx.ASGITransport, path: str, body: dict[str, Any], message: str
) -> None:
    response = call(transport, "POST", path, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["code"] == 400
    fine = call(transport, "POST", "/generate", {"text": FRANCE, "sampling_params": GREEDY})
    assert fine.status_code == 200 and fine.json()["text"].startswith(" Paris")
    assert call(transport, "GET", "/health").json() == {"status": "ok"}
    stats = call(transport, "GET", "/stats").json()
    assert (stats["num_running"], stats["num_waiting"]) == (0, 0)


@pytest.fixture
def own_engine(served: ServedModel) -> Iterator[Engine]:
    """An engine of its own on the served model's weights (this test stops it)."""
    shared = served.engine
    loaded = LoadedModel(shared.model_config, shared.runner.model, shared.tokenizer, Path())
    engine = Engine(model=loaded, kv_cache_tokens=1024)
    yield engine
    engine.close()


def test_health_is_503_once_the_engine_is_closed(own_engine: Engine) -> None:
    transport = httpx.ASGITransport(app=create_app(ServedModel.of_engine(own_engine)))
    assert call(transport, "GET", "/health").json() == {"status": "ok"}
    own_engine.close()
    response = call(transport, "GET", "/health")
    assert response.status_code == 503
    assert response.json() == {
        "error": {"message": "the engine is closed", "type": "server_error", "code": 503}
    }
    body = {"text": FRANCE, "sampling_params": GREEDY}
    refused = call(transport, "POST", "/generate", body)
    assert refused.status_code == 503
    assert refused.json()["error"] == {
        "message": "local engine: the engine is closed",
        "type": "server_error",
        "code": 503,
    }
    streamed = call(transport, "POST", "/generate", {**body, "stream": True})
    assert streamed.status_code == 503  # refused before its first event


def test_health_is_503_once_the_engine_stopped_after_an_internal_error(
    own_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure the engine cannot recover from (its cache is not consistent after a failed
    step) stops it: /health says so, /stats shows nothing running, requests get an error."""
    transport = httpx.ASGITransport(app=create_app(ServedModel.of_engine(own_engine)))

    def run(forward: ForwardBatch) -> torch.Tensor:
        raise RuntimeError("injected forward failure")

    def check_integrity() -> None:
        raise IntegrityError("slot 3 is owned by nobody (leaked)")

    monkeypatch.setattr(own_engine.runner, "run", run)
    monkeypatch.setattr(own_engine, "check_integrity", check_integrity)
    failed = call(transport, "POST", "/generate", {"text": FRANCE, "sampling_params": GREEDY})
    assert failed.status_code == 400 and "injected forward failure" in failed.text
    own_engine.loop.close()  # joins the loop's thread, which stopped already
    response = call(transport, "GET", "/health")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["message"].startswith("the engine stopped after an internal error")
    assert (error["type"], error["code"]) == ("server_error", 503)
    stats = call(transport, "GET", "/stats").json()
    assert (stats["num_running"], stats["num_waiting"]) == (0, 0)
    later = call(transport, "POST", "/generate", {"text": FRANCE, "sampling_params": GREEDY})
    assert later.status_code == 503  # the server cannot serve: not the request's fault
    error = later.json()["error"]
    assert "engine stopped" in error["message"] and error["type"] == "server_error"
