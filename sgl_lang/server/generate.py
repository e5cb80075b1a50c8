"""SGLang's `/generate` on token ids: one prompt or a batch, prefill only (`max_new_tokens: 0`),
the log-probs of prompt and output tokens (`return_logprob`, `logprob_start_len`,
`top_logprobs_num`, `return_text_in_logprobs`) and `meta_info` in SGLang's shapes."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fastapi import HTTPException

from sgl_lang.bridge.engine import engine_errors, finish_reason
from sgl_lang.bridge.sampling import sampling_params
from sgl_lang.protocol import GenRequest, GenResult
from sgl_lang.runtime.request import GenerationMeta
from sgl_lang.runtime.sampling import TopLogprobs
from sgl_lang.server.serving import ServedModel, unsatisfiable

Event = dict[str, Any]


@dataclass(frozen=True)
class Job:
    """One prompt of a /generate request, with its sampling fields and log-prob options.
    `logprob_start_len` is SGLang's: -1 scores only the last prompt token."""

    prompt_ids: list[int]
    request: GenRequest
    rid: str = ""
    stop_token_ids: tuple[int, ...] = ()
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    text_in_logprobs: bool = False

    @property
    def scored_from(self) -> int:
        """The first prompt position whose log-prob is returned."""
        start = self.logprob_start_len
        if start < 0:
            return len(self.prompt_ids) - 1
        if start >= len(self.prompt_ids):
            raise HTTPException(400, "`logprob_start_len` must be < the number of prompt tokens")
        return start


def new_rid() -> str:
    """A request id as SGLang makes them."""
    return uuid.uuid4().hex


async def job_events(model: ServedModel, job: Job) -> AsyncIterator[Event]:
    """SGLang's events of one job: the text so far and its `meta_info` (`finish_reason` null
    until the last event, which carries the final counts and log-probs)."""
    began = time.monotonic()
    prompt = None
    if job.return_logprob or not job.request.max_tokens:
        prompt = await _prefill(model, job)
        if not job.request.max_tokens:
            meta = _meta(job, prompt, prompt.cached_tokens, {"type": "length", "length": 0})
            yield {"text": "", "meta_info": {**meta, **_logprobs(model, job, prompt, None)}}
            return
    params = replace(
        sampling_params(job.request),
        stop_token_ids=job.stop_token_ids,
        return_logprobs=job.return_logprob,
        top_logprobs_num=job.top_logprobs_num if job.return_logprob else 0,
    )
    text, output_ids, output_logprobs = "", list[int](), list[float]()
    with engine_errors():
        chunks = model.engine.generate(job.prompt_ids, params)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                text += chunk.text
                if chunk.meta is None:
                    output_ids += chunk.token_ids
                    output_logprobs += chunk.logprobs or ()
                    yield _partial(model, job, text, prompt, output_ids, output_logprobs)
                    continue
                yield _final(model, job, text, prompt, chunk.meta, began)


def _partial(
    model: ServedModel,
    job: Job,
    text: str,
    prompt: GenerationMeta | None,
    output_ids: Sequence[int],
    output_logprobs: Sequence[float],
) -> Event:
    meta: dict[str, Any] = {"id": job.rid, "finish_reason": None}
    meta["prompt_tokens"] = len(job.prompt_ids)
    meta["completion_tokens"] = len(output_ids)
    if job.return_logprob:
        meta |= _logprobs(model, job, prompt, None)
        meta["output_token_logprobs"] = _entries(model, job, output_logprobs, output_ids)
        meta["output_token_logprobs_length"] = len(output_ids)
    return {"text": text, "meta_info": meta}


def _final(
    model: ServedModel,
    job: Job,
    text: str,
    prompt: GenerationMeta | None,
    meta: GenerationMeta,
    began: float,
) -> Event:
    eos_ids = model.engine.model_config.eos_token_ids
    kind = finish_reason(meta, eos_ids, job.request.ignore_eos)
    result = GenResult(text, kind, meta.prompt_tokens, meta.completion_tokens, meta.cached_tokens)
    unsatisfiable(result, job.request)
    cached = meta.cached_tokens if prompt is None else prompt.cached_tokens
    info = _meta(job, meta, cached, _finish(model, job, text, meta, kind))
    info |= _logprobs(model, job, prompt, meta) if job.return_logprob else {}
    info["e2e_latency"] = time.monotonic() - began
    return {"text": text, "meta_info": info}


def _meta(job: Job, meta: GenerationMeta, cached: int, finish: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": job.rid,
        "finish_reason": finish,
        "prompt_tokens": meta.prompt_tokens,
        "completion_tokens": meta.completion_tokens,
        "cached_tokens": cached,
    }


def _finish(
    model: ServedModel, job: Job, text: str, meta: GenerationMeta, kind: str
) -> dict[str, Any]:
    """SGLang's `finish_reason`: `{"type": "length", "length"}`, or `{"type": "stop",
    "matched"}` with the stop token id or stop string that ended the output (`kind`, ours:
    "eos", "stop" or "length", is kept for the `http` backend)."""
    if kind == "length":
        return {"type": "length", "length": meta.completion_tokens, "kind": kind}
    last_id = meta.output_ids[-1] if meta.output_ids else None
    matched: int | str | None = last_id
    if kind == "stop" and last_id not in job.stop_token_ids:
        flags = {"skip_special_tokens": False}
        produced = model.engine.tokenizer.decode(list(meta.output_ids), **flags)
        tail = produced[len(text) :] if produced.startswith(text) else produced
        found = [(tail.find(stop), stop) for stop in job.request.stop if stop in tail]
        matched = min(found)[1] if found else None
    return {"type": "stop", "matched": matched, "kind": kind}


def _logprobs(
    model: ServedModel, job: Job, prompt: GenerationMeta | None, output: GenerationMeta | None
) -> dict[str, Any]:
    """`input_token_logprobs`, `output_token_logprobs` and, with `top_logprobs_num`,
    `input_top_logprobs` and `output_top_logprobs`: one `[logprob, token_id, text]` per
    token (text null unless `return_text_in_logprobs`; the first prompt token has no
    log-prob), the top ones as a list of those per position."""
    if not job.return_logprob or prompt is None:
        return {}
    start = job.scored_from
    scored_ids = job.prompt_ids[start:]
    prompt_logprobs: list[float | None] = list(prompt.prompt_logprobs or ())
    prompt_tops: list[TopLogprobs | None] = list(prompt.prompt_top_logprobs or ())
    if start == 0:  # the first token is nobody's continuation
        prompt_logprobs, prompt_tops = [None, *prompt_logprobs], [None, *prompt_tops]
    output_ids = list(output.output_ids) if output else []
    info: dict[str, Any] = {
        "input_token_logprobs": _entries(model, job, prompt_logprobs, scored_ids),
        "output_token_logprobs": _entries(
            model, job, list(output.output_logprobs or ()) if output else [], output_ids
        ),
    }
    info["output_token_logprobs_length"] = len(output_ids)
    if job.top_logprobs_num:
        output_tops = list(output.output_top_logprobs or ()) if output else []
        info["input_top_logprobs"] = [_top_entries(model, job, top) for top in prompt_tops]
        info["output_top_logprobs"] = [_top_entries(model, job, top) for top in output_tops]
    return info


def _entries(
    model: ServedModel, job: Job, logprobs: Sequence[float | None], ids: Sequence[int]
) -> list[list[Any]]:
    texts = _texts(model, ids) if job.text_in_logprobs else [None] * len(ids)
    return [[lp, i, t] for lp, i, t in zip(logprobs, ids, texts, strict=True)]


def _top_entries(model: ServedModel, job: Job, top: TopLogprobs | None) -> list[list[Any]] | None:
    if not top:
        return None
    return _entries(model, job, [lp for _, lp in top], [i for i, _ in top])


def _texts(model: ServedModel, ids: Sequence[int]) -> list[str]:
    return [model.engine.tokenizer.decode([i]) for i in ids]


async def _prefill(model: ServedModel, job: Job) -> GenerationMeta:
    """The prompt's KV into the cache and, with `return_logprob`, its scored log-probs."""
    start = max(job.scored_from, 1) if job.return_logprob else None
    top = job.top_logprobs_num if job.return_logprob else 0
    with engine_errors():
        return await model.engine.prefill(job.prompt_ids, start, top)
