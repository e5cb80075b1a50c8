"""SGLang's worker API on the real SmolLM2, field by field: prefill-only requests, batches,
prompt and output log-probs (with top tokens and texts), `rid`, SGLang's `finish_reason`,
streamed log-probs, and /get_server_info, /health_generate, /tokenize, /detokenize,
/concate_and_append_request."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
import pytest

from sgl_lang.server.serving import ServedModel

pytestmark = pytest.mark.model

FRANCE = "The capital of France is"


def call(transport: httpx.ASGITransport, path: str, body: Any = None) -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://sgl") as client:
            if body is None:
                return await client.get(path)
            return await client.post(path, json=body)

    return asyncio.run(send())


def test_prefill_only_batch_scores_every_prompt_token(
    transport: httpx.ASGITransport, served: ServedModel
) -> None:
    texts = [FRANCE + " Paris", FRANCE + " Rome"]
    body = {
        "text": texts,
        "sampling_params": {"max_new_tokens": 0},
        "return_logprob": True,
        "logprob_start_len": 0,
        "top_logprobs_num": 2,
        "return_text_in_logprobs": True,
        "rid": ["a", "b"],
    }
    answers = call(transport, "/generate", body).json()
    assert [a["meta_info"]["id"] for a in answers] == ["a", "b"]
    for text, answer in zip(texts, answers, strict=True):
        meta = answer["meta_info"]
        ids = served.engine.tokenizer.encode(text)
        assert answer["text"] == "" and meta["completion_tokens"] == 0
        assert meta["finish_reason"] == {"type": "length", "length": 0}
        assert meta["prompt_tokens"] == len(ids) and meta["output_token_logprobs"] == []
        entries = meta["input_token_logprobs"]
        assert [token_id for _, token_id, _ in entries] == ids
        assert "".join(token_text for _, _, token_text in entries) == text
        assert entries[0][0] is None and all(lp < 0 for lp, _, _ in entries[1:])
        tops = meta["input_top_logprobs"]
        assert tops[0] is None and all(len(top) == 2 for top in tops[1:])
        for (lp, _, _), top in zip(entries[1:], tops[1:], strict=True):
            assert top[0][0] >= lp - 1e-4  # the most likely token is at least as likely
    paris, rome = (
        sum(lp for lp, _, _ in a["meta_info"]["input_token_logprobs"][1:]) for a in answers
    )
    assert paris > rome


def test_generation_with_logprobs_matches_a_prefill_of_its_output(
    transport: httpx.ASGITransport,
) -> None:
    body = {
        "text": FRANCE,
        "sampling_params": {"max_new_tokens": 4, "temperature": 0},
        "return_logprob": True,
        "top_logprobs_num": 1,
    }
    meta = call(transport, "/generate", body).json()["meta_info"]
    output = meta["output_token_logprobs"]
    assert len(output) == meta["completion_tokens"] == 4
    assert len(meta["input_token_logprobs"]) == 1  # -1: only the last prompt token
    for (lp, token_id, text), top in zip(output, meta["output_top_logprobs"], strict=True):
        assert text is None and top[0][:2] == [pytest.approx(lp, abs=1e-4), token_id]  # greedy
    ids = [t for _, t, _ in meta["input_token_logprobs"]]  # the last prompt token
    rescored = call(
        transport,
        "/generate",
        {
            "input_ids": [*_prompt_ids(transport), *(t for _, t, _ in output)],
            "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True,
            "logprob_start_len": meta["prompt_tokens"],
        },
    ).json()["meta_info"]
    assert ids and [e[1] for e in rescored["input_token_logprobs"]] == [t for _, t, _ in output]
    for (lp, _, _), (again, _, _) in zip(output, rescored["input_token_logprobs"], strict=True):
        assert math.isclose(lp, again, abs_tol=1e-3)


def _prompt_ids(transport: httpx.ASGITransport) -> list[int]:
    return call(transport, "/tokenize", {"prompt": FRANCE}).json()["tokens"]


def test_finish_reasons_name_what_matched(
    transport: httpx.ASGITransport, served: ServedModel
) -> None:
    def finish(**params: Any) -> dict[str, Any]:
        body = {"text": "Count: 1, 2,", "sampling_params": {"temperature": 0, **params}}
        return call(transport, "/generate", body).json()["meta_info"]["finish_reason"]

    assert finish(max_new_tokens=12, stop=[" 4", " 9"])["matched"] == " 4"
    comma = served.engine.tokenizer.encode(",")[0]
    assert finish(max_new_tokens=12, stop_token_ids=[comma])["matched"] == comma
    assert finish(max_new_tokens=2)["type"] == "length"


def test_a_stream_carries_growing_text_and_logprobs(transport: httpx.ASGITransport) -> None:
    async def stream() -> list[str]:
        body = {
            "text": FRANCE,
            "stream": True,
            "return_logprob": True,
            "sampling_params": {"max_new_tokens": 4, "temperature": 0},
        }
        async with httpx.AsyncClient(transport=transport, base_url="http://sgl") as client:
            response = await client.post("/generate", json=body)
            return [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]

    lines = asyncio.run(stream())
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-1])
    counts = [len(e["meta_info"]["output_token_logprobs"]) for e in events]
    assert counts == sorted(counts) and counts[-1] == 4
    assert all(events[i + 1]["text"].startswith(events[i]["text"]) for i in range(len(events) - 1))


def test_server_info_health_tokens_and_joins(transport: httpx.ASGITransport) -> None:
    info = call(transport, "/get_server_info").json()
    assert info == {
        **call(transport, "/server_info").json(),
        "internal_states": info["internal_states"],
    }
    assert info["context_length"] == 8192 and info["max_total_num_tokens"] > 0
    assert call(transport, "/health_generate").status_code == 200
    tokens = call(transport, "/tokenize", {"prompt": [FRANCE, "Hi"]}).json()
    assert tokens["count"] == [len(t) for t in tokens["tokens"]] == [5, 1]
    assert call(transport, "/detokenize", {"tokens": tokens["tokens"][0]}).json() == {
        "text": FRANCE
    }
    join = {"src_rids": ["a", "b"], "dst_rid": "c"}
    assert call(transport, "/concate_and_append_request", join).json()["success"] is True
    assert call(transport, "/detokenize", {"tokens": [10**9]}).status_code == 400


def test_text_with_heal_is_healed_as_a_structured_prompt(transport: httpx.ASGITransport) -> None:
    params = {"max_new_tokens": 4, "temperature": 0}
    text = "The answer is "

    def answer(**body: Any) -> str:
        return call(transport, "/generate", body).json()["text"]

    healed = answer(text=text, sampling_params={**params, "heal": True})
    structured = answer(
        prompt={"segments": [{"type": "text", "text": text}]}, sampling_params=params
    )
    assert healed == structured != answer(text=text, sampling_params=params)
