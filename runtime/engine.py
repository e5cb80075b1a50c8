"""The engine: requests in, streamed text out. Read this file first.

    engine = Engine.from_model(None, EngineConfig(kv_cache_gb=0.5))  # None = embedded SmolLM2
    async for chunk in engine.generate("Hi", SamplingParams(max_new_tokens=16)):
        print(chunk.text, end="")       # the last chunk carries chunk.meta (GenerationMeta)
    choices = await engine.score("Q: 2+2=? A:", [" 4", " 5"])  # log-probs of each choice
    engine.close()

A background thread runs `step()` while there is work:

    batch = scheduler.schedule()          # decode rows + cache-aware admission, prefill chunks
    logits = runner.run(batch.forward)    # one forward over the paged KV pool
    scheduler.postprocess(batch, logits)  # sample, stop, stream, finish, cache

One bad request fails alone (FinishReason.ERROR, a plain message) and the engine serves the
others: ids outside the vocabulary are refused at submit; a constraint compiles on a worker
thread within the grammar engine's limits and a time limit; a constraint or sampler that raises
fails its request; a forward that raises is re-run request by request, and a step that still
fails gives its requests' slots and locks back (`check_integrity()` clean). Only a cache left
inconsistent stops the engine; `health()` says whether it can serve.

Other threads (an asyncio loop, a blocking script) never touch the scheduler: they send it
commands through a queue (`engine_loop.py`) and read each request's chunks from its
OutputStream. Every prompt and every answer stays in the prefix cache (`radix_cache.py`; with
`enable_cache=False` the no-op cache of `prefix_cache.py`) until memory is needed, so a request
computes only the tokens no earlier request computed.

Public API (all thread-safe):
  Engine(config=None, *, model=None, threaded=True, **config_fields), Engine.from_model(path, config)
  async generate(prompt, params, *, rid=None) -> AsyncIterator[Chunk]   (raises RequestError)
  async score(prefix, choices, *, unconditional=False) -> list[ChoiceLogprobs]
  async cache_prefix(prompt) -> GenerationMeta                          (a fork/batch hint)
  async compile_constraint(spec) -> Constraint          (off the event loop, time-limited)
  cancel(rid), flush_cache() -> int, stats() -> EngineStats, health() -> EngineHealth, close()
  generate_many(prompts, params) -> list[Completion]                    (blocking, no raise)
A prompt is text, token ids, or chat messages ([{"role": ..., "content": ...}], rendered with
the tokenizer's chat template).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sgl_lang.runtime.batch import ScheduledBatch
from sgl_lang.runtime.config import EngineConfig
from sgl_lang.runtime.constrained import (
    ConstrainedDecoder,
    Constraint,
    ConstraintCache,
    ConstraintSpec,
)
from sgl_lang.runtime.detokenizer import IncrementalDecoder
from sgl_lang.runtime.engine_loop import EngineLoop
from sgl_lang.runtime.kernels import load_kernels
from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.model_loader import LoadedModel, load_model
from sgl_lang.runtime.model_runner import ModelRunner
from sgl_lang.runtime.prefix_cache import NoOpPrefixCache, PrefixCache
from sgl_lang.runtime.quantization import QuantSpec
from sgl_lang.runtime.radix_cache import RadixCache
from sgl_lang.runtime.request import (
    ChoiceLogprobs,
    Chunk,
    Completion,
    FinishReason,
    GenerationMeta,
    OutputStream,
    Request,
    RequestError,
    RequestKind,
)
from sgl_lang.runtime.sampling import Sampler, SamplingParams
from sgl_lang.runtime.scheduler import BatchKind, Scheduler
from sgl_lang.runtime.stats import EngineHealth, EngineStats, snapshot

Messages = Sequence[Mapping[str, str]]
Prompt = str | Sequence[int] | Messages


class Engine:
    """Continuous batching over a radix-tree prefix cache, stepped by a background thread.

    `config` (or its fields as keywords) says which model and how much KV memory; `model=`
    injects an already loaded model (tests; used as it is: `quantize` is `load_model`'s);
    `threaded=False` leaves stepping to the caller (`step()`), for tests that inspect the state
    between steps.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        model: LoadedModel | None = None,
        threaded: bool = True,
        **options: Any,
    ) -> None:
        self.config = config = (config or EngineConfig()).replace(**options)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        dtype = getattr(torch, config.dtype)
        quantize = QuantSpec(config.quantize, config.quantize_group_size, config.quantize_lm_head,
                             config.quantize_dense_rows)  # fmt: skip
        loaded = model or load_model(
            config.model_path, device=config.device, dtype=dtype, quantize=quantize
        )
        self.tokenizer, self.model_config = loaded.tokenizer, loaded.config
        c = loaded.config
        self.constraints = ConstraintCache(
            self.tokenizer, c.vocab_size, c.eos_token_ids, engine=config.grammar_engine
        )
        num_slots = config.kv_cache_tokens or KVPool.num_slots_for_budget(
            config.kv_cache_bytes(), c.num_layers, c.num_kv_heads, c.head_dim, dtype
        )
        kernels = load_kernels(config.kernels, config.device, c.head_dim)
        self.kv_pool = KVPool(c.num_layers, num_slots, c.num_kv_heads, c.head_dim, dtype,
                              config.device, kernels=kernels,
                              page_size=config.page_size or kernels.page_size_multiple)  # fmt: skip
        self.runner = ModelRunner(loaded.model, self.kv_pool)
        allocator = self.kv_pool.allocator
        self.prefix_cache: PrefixCache = (
            RadixCache(allocator) if config.enable_cache else NoOpPrefixCache(allocator)
        )
        max_context_len = config.max_context_len or c.max_position_embeddings
        self.scheduler = Scheduler(
            config, self.kv_pool, self.prefix_cache, Sampler(), c.eos_token_ids, max_context_len
        )
        self._busy_seconds = {BatchKind.EXTEND: 0.0, BatchKind.DECODE: 0.0}
        self._arrivals = itertools.count()
        self.loop = EngineLoop(self.scheduler, self.step, threaded=threaded)

    @classmethod
    def from_model(
        cls, path: str | Path | None = None, config: EngineConfig | None = None, **options: Any
    ) -> Engine:
        """An engine on the model at `path` (a HF folder or a .gguf; None = embedded SmolLM2)."""
        return cls((config or EngineConfig()).replace(model_path=path), **options)

    # -- the loop ------------------------------------------------------------------------

    def step(self) -> bool:
        """Run one batch: schedule -> run -> postprocess. False when there was nothing to do.
        A step that raises fails its own requests and the engine goes on (`_run`)."""
        self.loop.run_commands()
        try:
            batch = self.scheduler.schedule()
        except Exception as exc:
            self._fail_step(None, exc, kv_computed=False)
            return True
        if batch is None:
            return False
        started = time.perf_counter()
        self._run(batch)
        seconds = time.perf_counter() - started
        forward = batch.forward  # a mixed step's time is shared out by tokens
        decode_share = sum(forward.extend_lens[: batch.num_decode_rows]) / forward.num_tokens
        self._busy_seconds[BatchKind.DECODE] += seconds * decode_share
        self._busy_seconds[BatchKind.EXTEND] += seconds * (1 - decode_share)
        return True

    def _run(self, batch: ScheduledBatch) -> None:
        """Forward `batch`, then postprocess its logits. When the forward of several requests
        raises, each runs alone, so only a request whose own forward raises fails; when
        postprocessing raises, the batch's unfinished requests fail."""
        try:
            logits = self.runner.run(batch.forward)
        except Exception as exc:
            if len(batch.requests) == 1:
                self._fail_step(batch, exc, kv_computed=False)
            else:
                for alone in batch.split():
                    self._run(alone)
            return
        try:
            self.scheduler.postprocess(batch, logits)
        except Exception as exc:
            self._fail_step(batch, exc, kv_computed=True)

    def _fail_step(
        self, batch: ScheduledBatch | None, exc: Exception, *, kv_computed: bool
    ) -> None:
        """Fail the requests of a step that raised (`Scheduler.fail_step`), then check the
        cache: an IntegrityError escapes and stops the engine."""
        self.scheduler.fail_step(batch, exc, kv_computed=kv_computed)
        self.check_integrity()

    def close(self) -> None:
        """Abort what is still queued or running and stop the loop thread (idempotent)."""
        self.loop.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------

    def submit(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        stream: OutputStream | None = None,
        kind: RequestKind = RequestKind.GENERATE,
        logprob_start_len: int | None = None,
        rid: str | None = None,
    ) -> Request:
        """Queue one request (thread-safe); its chunks go to `stream`. A token id outside the
        vocabulary or an invalid `params.constraint` raises ValueError here."""
        params = params or SamplingParams(max_new_tokens=self.config.default_max_new_tokens)
        prompt_ids = self.encode(prompt)
        self._check_ids(prompt_ids)
        arrival = next(self._arrivals)
        generate = kind is RequestKind.GENERATE
        decoder = None
        if generate:
            decoder = IncrementalDecoder(
                self.tokenizer, params.stop, prompt_ids, params.stop_regex, params.include_stop
            )
        constraint = None
        if generate and params.constraint is not None:
            # this request's own matcher masks every step (the logits_processor) and advances
            # on every token (the decoder, which reports `stopped` once the grammar is complete)
            constraint = self.constraints.get(params.constraint).start()
            params = replace(params, constraint=None, logits_processor=constraint.process_logits)
            decoder = ConstrainedDecoder(decoder, constraint)
        req = Request(
            rid=rid or f"req-{arrival}",
            arrival=arrival,
            prompt_ids=prompt_ids,
            params=params,
            kind=kind,
            logprob_start_len=logprob_start_len,
            stream=stream,
            decoder=decoder,
            generator=None if params.seed is None else torch.Generator().manual_seed(params.seed),
            constraint=constraint,
        )
        self.loop.send(lambda: self.scheduler.add(req))
        return req

    async def generate(
        self, prompt: Prompt, params: SamplingParams | None = None, *, rid: str | None = None
    ) -> AsyncIterator[Chunk]:
        """Stream text chunks as they are decoded; the last chunk carries `meta`. A request that
        cannot run (longer than the context or the KV pool) raises RequestError. Leaving the
        iteration early cancels the request and frees its slots."""
        stream = OutputStream(asyncio.get_running_loop())
        if params is not None and params.constraint is not None:
            await self.compile_constraint(params.constraint)  # then `submit` finds it cached
        req = self.submit(prompt, params, stream=stream, rid=rid)
        try:
            while True:
                chunk = await stream.get()
                if chunk.meta is not None and chunk.meta.finish_reason is FinishReason.ERROR:
                    raise RequestError(chunk.meta)
                yield chunk
                if chunk.meta is not None:
                    return
        finally:
            if not req.finished and not self.loop.stopped:
                self.cancel(req.rid)

    async def compile_constraint(self, spec: ConstraintSpec) -> Constraint:
        """Compile `spec` on a worker thread (neither the caller's event loop nor the engine's
        thread waits on it); ValueError if it is invalid, exceeds the grammar engine's limits
        or takes longer than `EngineConfig.grammar_compile_timeout`."""
        timeout = self.config.grammar_compile_timeout
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self.constraints.get, spec), timeout=timeout
            )
        except TimeoutError:
            raise ValueError(
                f"the {spec.kind} constraint took longer than {timeout:g} s to compile"
            ) from None

    async def cache_prefix(self, prompt: Prompt) -> GenerationMeta:
        """Compute `prompt`'s KV into the cache without generating (a fork / batch hint)."""
        return await self.prefill(self.encode(prompt), None)

    async def score(
        self, prefix: Prompt, choices: Sequence[str], *, unconditional: bool = False
    ) -> list[ChoiceLogprobs]:
        """The log-probs of each choice's tokens as a continuation of `prefix`, and with
        `unconditional` also after only a neutral prefix (the BOS token). The prefix is
        computed once and shared via the cache. Choices are tokenized on their own: put a
        separating space in the choice, not the prefix."""
        prefix_ids = self.encode(prefix) or self._neutral_ids()
        choice_ids = [self.tokenizer.encode(c, add_special_tokens=False) for c in choices]
        if not choice_ids or not all(choice_ids):
            raise ValueError("score: choices must be a non-empty list of non-empty strings")
        contexts = [prefix_ids] + ([self._neutral_ids()] if unconditional else [])
        metas = await asyncio.gather(
            *(self.prefill(ctx + ids, len(ctx)) for ctx in contexts for ids in choice_ids)
        )
        scored = [tuple(m.prompt_logprobs or ()) for m in metas]
        num = len(choices)
        return [
            ChoiceLogprobs(text, tuple(ids), scored[i], scored[num + i] if unconditional else None)
            for i, (text, ids) in enumerate(zip(choices, choice_ids, strict=True))
        ]

    async def prefill(
        self, ids: list[int], logprob_start_len: int | None, top_logprobs_num: int = 0
    ) -> GenerationMeta:
        """Compute `ids`' KV into the cache without generating; with `logprob_start_len`, the
        meta's `prompt_logprobs` are those of `ids[logprob_start_len:]` (each after the tokens
        before it) and, with `top_logprobs_num`, its `prompt_top_logprobs` the most likely
        tokens at those positions. A prompt that cannot run raises RequestError."""
        stream = OutputStream(asyncio.get_running_loop())
        params = SamplingParams(top_logprobs_num=top_logprobs_num) if top_logprobs_num else None
        self.submit(
            ids,
            params,
            stream=stream,
            kind=RequestKind.PREFILL,
            logprob_start_len=logprob_start_len,
        )
        while (meta := (await stream.get()).meta) is None:
            pass
        if meta.finish_reason is FinishReason.ERROR:
            raise RequestError(meta)
        return meta

    def generate_many(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Submit all prompts at once (so they batch) and block until every one finishes; a
        request that cannot run comes back with finish_reason ERROR (scripts, benchmarks)."""
        all_params = params if isinstance(params, Sequence) else [params] * len(prompts)
        streams = [OutputStream() for _ in prompts]
        reqs = [
            self.submit(p, sp, stream=s)
            for p, sp, s in zip(prompts, all_params, streams, strict=True)
        ]
        while not self.loop.threaded and not all(r.finished for r in reqs):
            self.step()
        return [s.completion() for s in streams]

    def cancel(self, rid: str) -> None:
        """Abort request `rid` (its slots are freed; its stream gets a final ABORT chunk)."""
        self.loop.send(lambda: self.scheduler.abort(rid))

    def flush_cache(self) -> int:
        """Evict every unlocked prefix from the cache; returns the number of tokens freed.
        Blocks until the engine thread has handled every command sent before."""
        cache = self.prefix_cache
        return self.loop.call(lambda: cache.evict(cache.evictable_size))

    # -- text ----------------------------------------------------------------------------

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: text, ids as they are, or chat messages via the template."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        items = list(prompt)
        if items and isinstance(items[0], Mapping):
            text = self.apply_chat_template(items)  # the template writes its special tokens
            return self.tokenizer.encode(text, add_special_tokens=False)
        return [int(i) for i in items]  # type: ignore[arg-type]

    def _check_ids(self, ids: Sequence[int]) -> None:
        """Raise ValueError naming the first id the model has no embedding for."""
        vocab_size = self.model_config.vocab_size
        for position, token_id in enumerate(ids):
            if not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"token id {token_id} (prompt position {position}) is not in the "
                    f"vocabulary: ids go from 0 to {vocab_size - 1}"
                )

    def apply_chat_template(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _neutral_ids(self) -> list[int]:
        token_id = self.tokenizer.bos_token_id
        return [self.tokenizer.eos_token_id if token_id is None else token_id]

    # -- introspection -------------------------------------------------------------------

    def stats(self) -> EngineStats:
        """Queues, KV use, cache hit rate and tokens/s so far (a snapshot; see stats.py)."""
        return snapshot(self.scheduler, self._busy_seconds, self.kv_pool.kernels.name)

    def health(self) -> EngineHealth:
        """Whether the engine can serve requests, and if not why (closed, or stopped by an
        internal error it could not recover from)."""
        return self.loop.health()

    def check_integrity(self) -> None:
        """Raise if a KV slot is leaked or owned twice, or a lock count is off (tests)."""
        self.scheduler.memory.check_integrity(self.scheduler.active_requests())
