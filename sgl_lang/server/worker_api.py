"""The rest of SGLang's worker API around `/generate`: model and server info, a health check
that generates, tokenize and detokenize, and the join of `fork(..., mode="concate_and_append")`
that SGLang's frontend sends."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

import sgl_lang
from sgl_lang.protocol import Prompt
from sgl_lang.protocol.wire import SERVER_MARKER
from sgl_lang.runtime.sampling import SamplingParams
from sgl_lang.server import bounds
from sgl_lang.server.serving import ServedModel, error_body


class TokenizeIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    prompt: str | list[str]
    add_special_tokens: bool = True


class DetokenizeIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    tokens: list[bounds.TokenId]


class ConcateAndAppendIn(BaseModel):
    src_rids: list[str] = Field(min_length=1)
    dst_rid: str


def router(model: ServedModel) -> APIRouter:
    """The routes on `model`."""
    api = APIRouter()
    engine = model.engine

    @api.get("/get_model_info")
    async def model_info() -> dict[str, Any]:
        return {
            "model_path": model.name,
            "tokenizer_path": model.name,
            "is_generation": True,
            "preferred_sampling_params": None,
            SERVER_MARKER: sgl_lang.__version__,  # the `http` backend's check
        }

    @api.get("/get_server_info")
    @api.get("/server_info")
    async def server_info() -> dict[str, Any]:
        return server_info_of(model)

    @api.get("/health_generate", response_model=None)
    async def health_generate() -> Response:
        """200 once the engine has generated a token after the empty prompt (its BOS token);
        else 503."""
        prompt_ids = model.bridged.prompt_ids(Prompt(()))
        try:
            async for _ in engine.generate(prompt_ids, SamplingParams(max_new_tokens=1)):
                pass
        except Exception as exc:
            message = f"the engine cannot generate: {exc}"
            return JSONResponse(error_body(message, 503, "server_error"), status_code=503)
        return Response(status_code=200)

    @api.post("/tokenize")
    async def tokenize(body: TokenizeIn) -> dict[str, Any]:
        """SGLang's: `{"tokens", "count", "max_model_len"}` (lists for a list of prompts)."""
        encode = engine.tokenizer.encode
        if isinstance(body.prompt, list):
            tokens_of = [
                await asyncio.to_thread(encode, p, add_special_tokens=body.add_special_tokens)
                for p in body.prompt
            ]
            counts: int | list[int] = [len(t) for t in tokens_of]
            tokens: list[int] | list[list[int]] = tokens_of
        else:
            tokens = await asyncio.to_thread(
                encode, body.prompt, add_special_tokens=body.add_special_tokens
            )
            counts = len(tokens)
        return {"tokens": tokens, "count": counts, "max_model_len": model.context_len}

    @api.post("/detokenize")
    async def detokenize(body: DetokenizeIn) -> dict[str, str]:
        bounds.check_ids(body.tokens, model.vocab_size)
        return {"text": engine.tokenizer.decode(body.tokens)}

    @api.post("/concate_and_append_request")
    async def concate_and_append(body: ConcateAndAppendIn) -> dict[str, Any]:
        """Acknowledges a join of forks: SGLang's frontend then sends the joined text with the
        next request of `dst_rid`, whose KV the engine computes after the prefix it has
        cached (it does not splice the forks' separate KV, which SGLang's own server does not
        do either)."""
        return {"success": True, "src_rids": body.src_rids, "dst_rid": body.dst_rid}

    return api


def server_info_of(model: ServedModel) -> dict[str, Any]:
    """The server's arguments and state in the fields SGLang's `/get_server_info` has."""
    config, stats = model.engine.config, model.engine.stats()
    return {
        "model_path": model.name,
        "tokenizer_path": model.name,
        "served_model_name": model.name,
        "context_length": model.context_len,
        "max_total_num_tokens": stats.kv_slots_total,
        "max_running_requests": config.max_running_requests,
        "chunked_prefill_size": config.prefill_chunk_tokens,
        "schedule_policy": config.policy,
        "disable_radix_cache": not config.enable_cache,
        "grammar_backend": config.grammar_engine,
        "device": config.device,
        "dtype": config.dtype,
        "tp_size": 1,
        "dp_size": 1,
        "version": sgl_lang.__version__,
        "internal_states": [
            {
                "last_gen_throughput": stats.decode_tokens_per_s,
                "num_running_reqs": stats.num_running,
                "num_waiting_reqs": stats.num_waiting,
                "cache_hit_rate": stats.cache_hit_rate,
            }
        ],
    }
