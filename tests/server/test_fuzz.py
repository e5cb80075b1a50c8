"""Server fuzzing: schemathesis generates requests (valid and invalid) from the server's own
OpenAPI schema for every endpoint and sends them to `sgl serve`'s app over ASGI, on a tiny
random Llama with SmolLM2's tokenizer and a 64-token context (so a generation is short). No
answer may be a 5xx, and the engine must be idle and healthy afterwards."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from sgl_lang.runtime.config import EngineConfig
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.model_loader import LoadedModel
from sgl_lang.runtime.models.config import ModelConfig
from sgl_lang.runtime.models.llama import LlamaModel, random_state_dict
from sgl_lang.server.app import create_app
from sgl_lang.server.serving import ServedModel

pytestmark = pytest.mark.model

TINY = ModelConfig(
    vocab_size=49152,  # SmolLM2's: its tokenizer encodes and decodes the tiny model's tokens
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=128,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    eos_token_ids=(2,),
)
# generated requests per operation: the ones that run the model get more
EXAMPLES = {"POST": 220, "GET": 30}  # a GET without parameters has few distinct cases
MIN_REQUESTS = 1000


@pytest.fixture(scope="module")
def fuzz_app(served: ServedModel) -> Iterator[FastAPI]:
    model = LlamaModel.from_state_dict(TINY, random_state_dict(TINY, seed=0)).eval()
    loaded = LoadedModel(TINY, model, served.engine.tokenizer, Path("."))
    engine = Engine(EngineConfig(max_context_len=64, kv_cache_tokens=4096), model=loaded)
    yield create_app(ServedModel.of_engine(engine, "tiny"))
    engine.close()


def test_generated_requests_get_no_5xx_and_leave_the_engine_idle(fuzz_app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11  # every route: native and OpenAI
    engine: Engine = fuzz_app.state.model.engine
    statuses: Counter[int] = Counter()
    faults: list[str] = []
    stopped_by: list[str] = []  # the request after which the engine no longer served
    for operation in operations:
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=EXAMPLES[operation.method.upper()],
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases)
        def send(case: schemathesis.Case) -> None:
            response = case.call()
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                faults.append(f"{case.method} {case.path}: {response.status_code} {case.body!r}")
            if engine.loop.stopped and not stopped_by:
                stopped_by.append(case.as_curl_command())

        send()
    print(f"fuzz: {statuses.total()} requests, statuses {dict(sorted(statuses.items()))}")
    assert statuses.total() >= MIN_REQUESTS
    assert faults == []
    assert stopped_by == []
    assert get(fuzz_app, "/health").status_code == 200
    stats = get(fuzz_app, "/stats").json()
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    body = {"text": "Hello", "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    answer = asyncio.run(_post(fuzz_app, "/generate", body))
    assert answer.status_code == 200 and answer.json()["meta_info"]["completion_tokens"] >= 1
    fuzz_app.state.model.engine.check_integrity()


def get(app: FastAPI, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            return await c.get(path)

    return asyncio.run(go())


async def _post(app: FastAPI, path: str, body: object) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await c.post(path, json=body)
