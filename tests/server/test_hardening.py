"""`sgl serve` as an attacker meets it: oversize bodies, a long tokenization beside /health,
foreign Host headers (DNS rebinding), the key on /docs and /openapi.json, GET on a state
change, out-of-range numbers, constraints nothing satisfies, and errors in the JSON shape."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI

from sgl_lang.bridge import engine as bridge_engine
from sgl_lang.bridge.options import EngineOptions
from sgl_lang.cli import main
from sgl_lang.server import guard
from sgl_lang.server.app import create_app
from sgl_lang.server.guard import MAX_BODY_BYTES, default_allowed_hosts
from sgl_lang.server.serving import ServedModel

pytestmark = pytest.mark.model

FRANCE = "The capital of France is"


def send(
    app: FastAPI,
    method: str,
    path: str,
    *,
    headers: dict[str, Any] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://sgl") as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(go())


def assert_error(response: httpx.Response, status: int, words: str = "") -> None:
    """`response` is the documented error: the status, and `{"error": {message, type, code}}`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"} and error["code"] == status
    assert words in error["message"]


def test_a_body_over_the_limit_is_413(app: FastAPI) -> None:
    text = "word " * (MAX_BODY_BYTES // 5 + 1000)
    body = {"text": text, "sampling_params": {"max_new_tokens": 1}}
    assert_error(send(app, "POST", "/generate", json=body), 413, "larger than")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        data = json.dumps(body).encode()
        for start in range(0, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]

    headers = {"content-type": "application/json"}
    assert_error(send(app, "POST", "/generate", content=chunks(), headers=headers), 413)
    small = create_app(app.state.model, max_body_bytes=100)
    assert_error(send(small, "POST", "/generate", json={"text": "a" * 200}), 413)
    ok = send(
        small, "POST", "/generate", json={"text": "a", "sampling_params": {"max_new_tokens": 1}}
    )
    assert ok.status_code == 200


def test_health_answers_while_a_long_prompt_is_tokenized(
    live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendering blocks until /health has answered: on the event loop it would block /health
    too, and the wait would run out instead."""
    started, release = threading.Event(), threading.Event()
    released: list[bool] = []
    render = bridge_engine.render_prompt

    def blocking_render(tokenizer: Any, prompt: Any) -> Any:
        started.set()
        released.append(release.wait(timeout=30))
        return render(tokenizer, prompt)

    monkeypatch.setattr(bridge_engine, "render_prompt", blocking_render)
    answers: list[httpx.Response] = []
    body = {"text": FRANCE, "sampling_params": {"max_new_tokens": 2, "temperature": 0}}
    client = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{live_server.url}/generate", json=body, timeout=120)
        )
    )
    client.start()
    assert started.wait(timeout=60)
    health = httpx.get(f"{live_server.url}/health", timeout=120)
    release.set()
    client.join()
    assert health.status_code == 200
    assert released == [True]  # /health answered while the tokenization was still blocked
    assert answers[0].status_code == 200


def test_host_allow_list_on_loopback_stops_dns_rebinding(served: ServedModel) -> None:
    app = create_app(served, allowed_hosts=default_allowed_hosts("127.0.0.1"))
    for host in ("evil.example", "evil.example:30000", "127.0.0.1.evil.example", ""):
        response = send(app, "GET", "/v1/models", headers={"host": host})
        assert_error(response, 400, "Host")
    for host in ("localhost:30000", "127.0.0.1:30000", "[::1]:30000", "localhost", "LOCALHOST"):
        assert send(app, "GET", "/v1/models", headers={"host": host}).status_code == 200
    assert default_allowed_hosts("0.0.0.0") is None
    assert default_allowed_hosts("0.0.0.0", ["api.example"]) == {"api.example"}
    assert "api.example" in (default_allowed_hosts("localhost", ["API.example"]) or ())


def test_docs_and_openapi_need_the_key(served: ServedModel) -> None:
    app = create_app(served, api_key="sekret")
    for path in ("/docs", "/openapi.json", "/redoc", "/flush_cache", "/nowhere"):
        assert_error(send(app, "GET", path), 401, "API key")
    key = {"authorization": "Bearer sekret"}
    assert send(app, "GET", "/openapi.json", headers=key).json()["info"]["title"] == "sgl serve"
    assert send(app, "GET", "/health").status_code == 200


def test_the_key_is_compared_in_constant_time(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []

    def compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(guard.hmac, "compare_digest", compare)
    app = create_app(served, api_key="sekret")
    assert_error(send(app, "GET", "/stats", headers={"x-api-key": "sekreT"}), 401)
    assert compared == [(b"sekreT", b"sekret")]
    monkeypatch.undo()
    # a key that is not ASCII is a wrong key, not a server fault
    assert_error(send(app, "GET", "/stats", headers={"x-api-key": "sékret".encode()}), 401)


def test_flush_cache_is_post_only(app: FastAPI) -> None:
    response = send(app, "GET", "/flush_cache")
    assert_error(response, 405)
    assert response.headers["allow"] == "POST"
    assert send(app, "POST", "/flush_cache").status_code == 200


def greedy(**fields: Any) -> dict[str, Any]:
    return {"max_new_tokens": 2, "temperature": 0, **fields}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"text": "a", "sampling_params": greedy(max_new_tokens=2**70)}, "max_new_tokens"),
        ({"text": "a", "sampling_params": greedy(max_new_tokens=9000)}, "model's context"),
        ({"text": "a", "sampling_params": greedy(temperature=1e308)}, "temperature"),
        ({"text": "a", "sampling_params": greedy(top_p=0)}, "top_p"),
        ({"text": "a", "sampling_params": greedy(top_k=2**70)}, "top_k"),
        ({"text": "a", "sampling_params": greedy(min_p=2)}, "min_p"),
        ({"text": "a", "sampling_params": greedy(presence_penalty=-3)}, "presence_penalty"),
        ({"text": "a", "sampling_params": greedy(seed=2**70)}, "seed"),
        ({"text": "a", "sampling_params": greedy(sampling_seed=-1)}, "sampling_seed"),
        ({"text": "a", "sampling_params": greedy(choices=[])}, "choices"),
        ({"input_ids": [1, 10**30], "sampling_params": greedy()}, "input_ids"),
        ({"input_ids": [1, -1], "sampling_params": greedy()}, "input_ids"),
        ({"input_ids": [1, 49152], "sampling_params": greedy()}, "vocabulary"),
    ],
)
def test_numbers_out_of_range_are_400(app: FastAPI, body: dict[str, Any], words: str) -> None:
    assert_error(send(app, "POST", "/generate", json=body), 400, words)


def test_nan_and_infinity_are_400(app: FastAPI) -> None:
    for value in ("NaN", "Infinity", "-Infinity"):
        content = f'{{"text": "a", "sampling_params": {{"temperature": {value}}}}}'
        headers = {"content-type": "application/json"}
        assert_error(send(app, "POST", "/generate", content=content, headers=headers), 400)
    assert math.isnan(json.loads("NaN"))  # Python's JSON reads it: the bound must refuse it


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/completions", {"prompt": "a", "max_tokens": 2**70}, "max_tokens"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 9000}, "model's context"),
        ("/v1/completions", {"prompt": "a", "n": 0}, "n"),
        ("/v1/completions", {"prompt": "a", "seed": 2**64}, "seed"),
        ("/v1/completions", {"prompt": "a", "guided_choice": []}, "guided_choice"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 2**40},
            "max_completion_tokens",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a"}], "top_p": 2},
            "top_p",
        ),
        ("/score", {"text": "a", "choices": []}, "choices"),
        ("/cache_prefix", {"input_ids": [10**6]}, "vocabulary"),
    ],
)
def test_openai_and_other_numbers_out_of_range_are_400(
    app: FastAPI, path: str, body: dict[str, Any], words: str
) -> None:
    assert_error(send(app, "POST", path, json=body), 400, words)


@pytest.mark.parametrize("pattern", [r"x[^\s\S]", r"(yes|no)[^\s\S]"])
def test_a_regex_nothing_satisfies_is_400(app: FastAPI, pattern: str) -> None:
    body = {"text": FRANCE, "sampling_params": greedy(max_new_tokens=8, regex=pattern)}
    # the engine's grammar compile finds it first ("no output can start to match it"); the
    # server's check of a finished output is the fallback ("no output can satisfy")
    assert_error(send(app, "POST", "/generate", json=body), 400, "no output can")
    chat = {"messages": [{"role": "user", "content": "hi"}], "guided_regex": pattern}
    assert_error(send(app, "POST", "/v1/chat/completions", json=chat), 400, "no output")
    body["stream"] = True  # found before the first event: still a 400, not a stream
    assert_error(send(app, "POST", "/generate", json=body), 400, "no output can")


def test_a_satisfiable_regex_still_answers(app: FastAPI) -> None:
    body = {"text": FRANCE, "sampling_params": greedy(max_new_tokens=8, regex="[0-9]+|yes")}
    response = send(app, "POST", "/generate", json=body)
    assert response.status_code == 200


def test_every_error_has_the_documented_shape(
    app: FastAPI, served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_error(send(app, "GET", "/nowhere"), 404)
    assert_error(send(app, "DELETE", "/generate"), 405)
    assert_error(send(app, "POST", "/generate", content=b"{not json"), 400)

    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(served.engine, "stats", broken)
    response = send(app, "GET", "/stats")
    assert_error(response, 500, "internal server error")
    assert response.json()["error"]["type"] == "server_error"


def test_serve_takes_the_engine_options(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    loaded: list[EngineOptions | None] = []
    apps: list[FastAPI] = []

    def load(path: Path | None, name: str | None = None, options: Any = None) -> ServedModel:
        loaded.append(options)
        return served

    monkeypatch.setattr(ServedModel, "load", staticmethod(load))
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: apps.append(app))
    args = ["serve", "--threads", "2", "--kv-cache-gb", "0.5", "--policy", "fcfs", "--no-cache"]
    args += ["--max-running", "3", "--allow-host", "sgl.internal", "--max-body-mb", "0.001"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert loaded == [
        EngineOptions(
            kv_cache_gb=0.5,
            policy="fcfs",
            enable_cache=False,
            max_running_requests=3,
            num_threads=2,
        )
    ]
    app = apps[0]
    assert send(app, "GET", "/v1/models", headers={"host": "sgl.internal:30000"}).status_code == 200
    assert_error(send(app, "GET", "/v1/models", headers={"host": "evil.example"}), 400)
    big = {"text": "a" * 2000}
    assert_error(send(app, "POST", "/generate", json=big, headers={"host": "localhost"}), 413)
