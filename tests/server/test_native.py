"""`sgl serve`'s native API on the real SmolLM2: /generate (SGLang's format, streamed or not),
/score, /cache_prefix, /flush_cache, /health, /stats, /metrics, API keys, malformed requests,
oversize prompts and clients that disconnect mid-stream."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from sgl_lang.server.app import create_app
from sgl_lang.server.serving import ServedModel

pytestmark = pytest.mark.model

FRANCE = "The capital of France is"


def post(transport: httpx.ASGITransport, path: str, body: Any) -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://sgl") as client:
            return await client.post(path, json=body)

    return asyncio.run(send())


def greedy(max_new_tokens: int, **fields: Any) -> dict[str, Any]:
    return {"max_new_tokens": max_new_tokens, "temperature": 0, **fields}


def test_generate_in_sglang_format(transport: httpx.ASGITransport) -> None:
    response = post(transport, "/generate", {"text": FRANCE, "sampling_params": greedy(3)})
    assert response.status_code == 200
    body = response.json()
    assert body["text"].startswith(" Paris")
    meta = body["meta_info"]
    assert meta["completion_tokens"] == 3
    assert meta["prompt_tokens"] == 5
    assert meta["finish_reason"] == {"type": "length", "length": 3, "kind": "length"}


def test_generate_from_token_ids_matches_text(
    transport: httpx.ASGITransport, served: ServedModel
) -> None:
    ids = served.engine.tokenizer.encode(FRANCE)
    by_ids = post(transport, "/generate", {"input_ids": ids, "sampling_params": greedy(3)})
    by_text = post(transport, "/generate", {"text": FRANCE, "sampling_params": greedy(3)})
    assert by_ids.json()["text"] == by_text.json()["text"]
    assert by_ids.json()["meta_info"]["cached_tokens"] >= 4  # the same prompt, from the cache


def test_structured_prompt_uses_the_chat_template_and_constraints(
    transport: httpx.ASGITransport,
) -> None:
    prompt = {
        "segments": [{"type": "message", "role": "user", "content": "How many legs has a cat?"}],
        "open_role": "assistant",
    }
    body = {"prompt": prompt, "sampling_params": greedy(8, regex="[0-9]+")}
    text = post(transport, "/generate", body).json()["text"]
    assert text.isdigit()
    schema = {"type": "object", "properties": {"legs": {"type": "integer"}}, "required": ["legs"]}
    body = {"prompt": prompt, "sampling_params": greedy(16, json_schema=json.dumps(schema))}
    assert isinstance(json.loads(post(transport, "/generate", body).json()["text"])["legs"], int)
    body = {"prompt": prompt, "sampling_params": greedy(8, choices=["two", "four"])}
    assert post(transport, "/generate", body).json()["text"] in ("two", "four")


def test_streamed_generate_sends_the_text_so_far_then_done(
    transport: httpx.ASGITransport,
) -> None:
    body = {"text": FRANCE, "sampling_params": greedy(4), "stream": True}
    response = post(transport, "/generate", body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    texts = [json.loads(e)["text"] for e in events[:-1]]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    final = json.loads(events[-2])
    whole = post(transport, "/generate", {"text": FRANCE, "sampling_params": greedy(4)}).json()
    assert final["text"] == whole["text"]
    assert final["meta_info"]["completion_tokens"] == 4


def test_score_ranks_choices(transport: httpx.ASGITransport) -> None:
    body = {"text": FRANCE, "choices": [" Paris", " London"], "method": "normalized"}
    scores = post(transport, "/score", body).json()["scores"]
    assert scores[0] > scores[1]


def test_cache_prefix_then_generate_hits_the_cache(transport: httpx.ASGITransport) -> None:
    prefix = "A long shared preamble about caching prefixes in servers. " * 4
    assert post(transport, "/cache_prefix", {"text": prefix}).status_code == 200
    answer = post(transport, "/generate", {"text": prefix + "Q:", "sampling_params": greedy(1)})
    meta = answer.json()["meta_info"]
    assert meta["cached_tokens"] >= meta["prompt_tokens"] - 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"sampling_params": greedy(2)}, "exactly one of"),
        ({"text": "a", "input_ids": [1], "sampling_params": greedy(2)}, "exactly one of"),
        ({"text": 3}, "text.str: Input should be a valid string"),
        ({"text": "a", "sampling_params": greedy(-1)}, "max_new_tokens must be >= 1"),
        ({"text": ["a", "b"], "stream": True}, "`stream` takes one prompt"),
        ({"text": ["a", "b"], "rid": ["r"]}, "`rid` must have one value per prompt"),
        ({"text": "a", "return_logprob": True, "logprob_start_len": 5}, "logprob_start_len"),
        ({"text": "a", "sampling_params": {"temperature": -1}}, "temperature"),
        ({"text": "a", "sampling_params": greedy(2, regex="(")}, "regex"),
        ({"text": "a", "sampling_params": greedy(2, json_schema="{")}, "not JSON"),
        ({"text": "a", "sampling_params": greedy(2, regex="a", choices=["a"])}, "at most one"),
        ({"prompt": {"segments": [{"type": "video"}]}}, "segment 0 is malformed"),
        ({"text": "word " * 9000, "sampling_params": greedy(2)}, "context"),
    ],
)
def test_malformed_requests_are_400_with_a_json_error(
    transport: httpx.ASGITransport, body: dict[str, Any], message: str
) -> None:
    response = post(transport, "/generate", body)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_invalid_json_and_bad_score_method_are_400(transport: httpx.ASGITransport) -> None:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://sgl") as client:
            return await client.post("/generate", content=b"{not json")

    assert asyncio.run(send()).status_code == 400
    body = {"text": "a", "choices": ["b"], "method": "best"}
    assert "method" in post(transport, "/score", body).json()["error"]["message"]


def test_oversize_streamed_request_is_400_before_streaming(transport: httpx.ASGITransport) -> None:
    body = {"text": "word " * 9000, "sampling_params": greedy(2), "stream": True}
    response = post(transport, "/generate", body)
    assert response.status_code == 400


def test_health_stats_metrics_and_flush(transport: httpx.ASGITransport) -> None:
    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://sgl") as client:
            return await client.get(path)

    assert asyncio.run(get("/health")).json() == {"status": "ok"}
    post(transport, "/generate", {"text": FRANCE, "sampling_params": greedy(1)})
    stats = asyncio.run(get("/stats")).json()
    assert stats["num_prompt_tokens"] > 0 and 0 <= stats["cache_hit_rate"] <= 1
    metrics = asyncio.run(get("/metrics")).text
    assert "# TYPE sgl_cache_hit_rate gauge" in metrics
    assert "sgl_kv_usage " in metrics and "sgl_decode_tokens_per_second " in metrics
    assert post(transport, "/flush_cache", {}).json()["num_tokens_freed"] >= 0


def test_api_key_is_required_except_for_health(served: ServedModel) -> None:
    app: FastAPI = create_app(served, api_key="sekret")
    transport = httpx.ASGITransport(app=app)

    async def send(headers: dict[str, str]) -> tuple[int, int]:
        async with httpx.AsyncClient(transport=transport, base_url="http://sgl") as client:
            health = await client.get("/health")
            models = await client.get("/v1/models", headers=headers)
            return health.status_code, models.status_code

    assert asyncio.run(send({})) == (200, 401)
    assert asyncio.run(send({"Authorization": "Bearer wrong"})) == (200, 401)
    assert asyncio.run(send({"Authorization": "Bearer sekret"})) == (200, 200)
    assert asyncio.run(send({"x-api-key": "sekret"})) == (200, 200)


def test_a_client_that_disconnects_mid_stream_frees_its_request(
    live_server: Any, served: ServedModel
) -> None:
    engine = served.engine
    num_decoded = engine.stats().num_decode_tokens

    async def read_a_little() -> None:
        params = greedy(400, ignore_eos=True)
        body = {"text": "Once upon a time", "sampling_params": params, "stream": True}
        async with (
            httpx.AsyncClient(base_url=live_server.url) as client,
            client.stream("POST", "/generate", json=body) as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    break  # leave after the first event: the connection closes

    asyncio.run(read_a_little())
    for _ in range(500):  # the server notices the disconnect and cancels the request
        if not engine.scheduler.has_work:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert not engine.scheduler.has_work
    assert engine.stats().num_decode_tokens - num_decoded < 400  # cancelled, not finished
    engine.check_integrity()
