"""The engine: requests in, streamed text out. Read this file first.

    engine = Engine.from_model(None, EngineConfig(kv_cache_gb=0.5))  # None = embedded SmolLM2
    async for chunk in engine.generate("Hi", SamplingParams(max_new_tokens=16)):
        print(chunk.text, end="")       # the last chunk carries chunk.meta (GenerationMeta)
    choices = await engine.score("Q: 2+2=? A:", [" 4", " 5"])  # log-probs of each choice
    engine.close()

A background thread runs `step()` while there is work:

    batch = scheduler.schedule()          # cache-aware admission + prefill chunks, or decode
    logits = runner.run(batch.forward)    # one forward over the paged KV pool
    scheduler.postprocess(batch, logits)  # sample, stop, stream, finish, cache

Other threads (an asyncio loop, a blocking script) never touch the scheduler: they send it
commands through a queue and read each request's chunks from its OutputStream. Every prompt and
every answer stays in the radix tree (`radix_cache.py`) until memory is needed, so a request
computes only the tokens no earlier request computed.

Public API (all thread-safe):
  Engine(config=None, *, model=None, threaded=True, **config_fields), Engine.from_model(path, config)
  async generate(prompt, params, *, rid=None) -> AsyncIterator[Chunk]   (raises RequestError)
  async score(prefix, choices, *, unconditional=False) -> list[ChoiceLogprobs]
  async cache_prefix(prompt) -> GenerationMeta                          (a fork/batch hint)
  cancel(rid), flush_cache() -> int, stats() -> EngineStats, close()
  generate_many(prompts, params) -> list[Completion]                    (blocking, no raise)
A prompt is text, token ids, or chat messages ([{"role": ..., "content": ...}], rendered with
the tokenizer's chat template).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sgl_lang.runtime.config import EngineConfig
from sgl_lang.runtime.constrained import ConstrainedDecoder, ConstraintCache
from sgl_lang.runtime.detokenizer import IncrementalDecoder
from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.model_loader import LoadedModel, load_model
from sgl_lang.runtime.model_runner import ModelRunner
from sgl_lang.runtime.radix_cache import IntegrityError, RadixCache
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
    RequestStatus,
)
from sgl_lang.runtime.sampling import Sampler, SamplingParams
from sgl_lang.runtime.scheduler import BatchKind, Scheduler
from sgl_lang.runtime.stats import EngineStats

Messages = Sequence[Mapping[str, str]]
Prompt = str | Sequence[int] | Messages


class Engine:
    """Continuous batching over a radix-tree prefix cache, stepped by a background thread.

    `config` (or its fields as keywords) says which model and how much KV memory; `model=`
    injects an already loaded model (tests); `threaded=False` leaves stepping to the caller
    (`step()`), for tests that inspect the state between steps.
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
        loaded = model or load_model(config.model_path, device=config.device, dtype=dtype)
        self.tokenizer, self.model_config = loaded.tokenizer, loaded.config
        c = loaded.config
        self.constraints = ConstraintCache(
            self.tokenizer, c.vocab_size, c.eos_token_ids, engine=config.grammar_engine
        )
        num_slots = config.kv_cache_tokens or KVPool.num_slots_for_budget(
            config.kv_cache_bytes(), c.num_layers, c.num_kv_heads, c.head_dim, dtype
        )
        self.kv_pool = KVPool(c.num_layers, num_slots, c.num_kv_heads, c.head_dim, dtype,
                              config.device)  # fmt: skip
        self.runner = ModelRunner(loaded.model, self.kv_pool)
        self.tree = RadixCache(self.kv_pool.allocator) if config.enable_cache else None
        max_context_len = config.max_context_len or c.max_position_embeddings
        self.scheduler = Scheduler(
            config, self.kv_pool, self.tree, Sampler(), c.eos_token_ids, max_context_len
        )
        self._busy_seconds = {BatchKind.EXTEND: 0.0, BatchKind.DECODE: 0.0}
        self._arrivals = itertools.count()
        self._inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="sgl-engine", daemon=True)
            self._thread.start()

    @classmethod
    def from_model(
        cls, path: str | Path | None = None, config: EngineConfig | None = None, **options: Any
    ) -> Engine:
        """An engine on the model at `path` (a HF folder or a .gguf; None = embedded SmolLM2)."""
        return cls((config or EngineConfig()).replace(model_path=path), **options)

    # -- the loop ------------------------------------------------------------------------

    def step(self) -> bool:
        """Run one batch: schedule -> run -> postprocess. False when there was nothing to do."""
        self._run_commands()
        if (batch := self.scheduler.schedule()) is None:
            return False
        started = time.perf_counter()
        logits = self.runner.run(batch.forward)
        self.scheduler.postprocess(batch, logits)
        self._busy_seconds[batch.kind] += time.perf_counter() - started
        return True

    def _loop(self) -> None:
        try:
            while not self._closed:
                if self.scheduler.has_work:
                    self.step()
                else:
                    self._run(self._inbox.get())  # idle: sleep until a command arrives
        except BaseException as exc:  # a bug: fail every request loudly, stop the loop
            self._fail(exc)

    def _run_commands(self) -> None:
        while not self._closed:
            try:
                self._run(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _run(self, command: Callable[[], None] | None) -> None:
        if command is None:
            self._closed = True
            for req in self.scheduler.waiting + self.scheduler.active_requests():
                self.scheduler.abort(req.rid)
        else:
            command()

    def _send(self, command: Callable[[], None]) -> None:
        if self._failure is not None:
            raise RuntimeError("the engine stopped after an internal error") from self._failure
        if self._closed:
            raise RuntimeError("the engine is closed")
        self._inbox.put(command)

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        for req in self.scheduler.waiting + self.scheduler.active_requests():
            req.status, req.finish_reason = RequestStatus.FINISHED, FinishReason.ERROR
            req.error = f"engine failure: {exc!r}"
            req.emit_final()

    def close(self) -> None:
        """Abort what is still queued or running and stop the loop thread (idempotent)."""
        if not self._closed and self._failure is None:
            self._inbox.put(None)
            if self._thread is None:
                self._run_commands()
        if self._thread is not None:
            self._thread.join()

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
        """Queue one request (thread-safe); its chunks go to `stream`. An invalid
        `params.constraint` raises ValueError here."""
        params = params or SamplingParams(max_new_tokens=self.config.default_max_new_tokens)
        arrival = next(self._arrivals)
        prompt_ids = self.encode(prompt)
        generate = kind is RequestKind.GENERATE
        decoder = IncrementalDecoder(self.tokenizer, params.stop, prompt_ids) if generate else None
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
        self._send(lambda: self.scheduler.add(req))
        return req

    async def generate(
        self, prompt: Prompt, params: SamplingParams | None = None, *, rid: str | None = None
    ) -> AsyncIterator[Chunk]:
        """Stream text chunks as they are decoded; the last chunk carries `meta`. A request that
        cannot run (longer than the context or the KV pool) raises RequestError. Leaving the
        iteration early cancels the request and frees its slots."""
        stream = OutputStream(asyncio.get_running_loop())
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
            if not req.finished and self._failure is None and not self._closed:
                self.cancel(req.rid)

    async def cache_prefix(self, prompt: Prompt) -> GenerationMeta:
        """Compute `prompt`'s KV into the tree without generating (a fork / batch hint)."""
        return await self.prefill(self.encode(prompt), None)

    async def score(
        self, prefix: Prompt, choices: Sequence[str], *, unconditional: bool = False
    ) -> list[ChoiceLogprobs]:
        """The log-probs of each choice's tokens as a continuation of `prefix`, and with
        `unconditional` also after only a neutral prefix (the BOS token). The prefix is
        computed once and shared via the tree. Choices are tokenized on their own: put a
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

    async def prefill(self, ids: list[int], logprob_start_len: int | None) -> GenerationMeta:
        """Compute `ids`' KV into the tree without generating; with `logprob_start_len`, the
        meta's `prompt_logprobs` are those of `ids[logprob_start_len:]` (each after the tokens
        before it). A prompt that cannot run raises RequestError."""
        stream = OutputStream(asyncio.get_running_loop())
        self.submit(
            ids, stream=stream, kind=RequestKind.PREFILL, logprob_start_len=logprob_start_len
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
        while self._thread is None and not all(r.finished for r in reqs):
            self.step()
        return [_collect(s) for s in streams]

    def cancel(self, rid: str) -> None:
        """Abort request `rid` (its slots are freed; its stream gets a final ABORT chunk)."""
        self._send(lambda: self.scheduler.abort(rid))

    def flush_cache(self) -> int:
        """Evict every unlocked prefix from the tree; returns the number of tokens freed.
        Blocks until the engine thread has handled every command sent before."""
        done: Future[int] = Future()
        tree = self.tree
        self._send(lambda: done.set_result(tree.evict(tree.evictable_size) if tree else 0))
        if self._thread is None:
            self._run_commands()
        return done.result()

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
        s, counters, allocator = self.scheduler, self.scheduler.counters, self.kv_pool.allocator
        extend_s, decode_s = (
            self._busy_seconds[BatchKind.EXTEND],
            self._busy_seconds[BatchKind.DECODE],
        )
        return EngineStats(
            num_waiting=len(s.waiting),
            num_running=len(s.prefilling) + len(s.running),
            kv_slots_used=allocator.num_used,
            kv_slots_total=allocator.num_slots,
            tree_tokens=self.tree.total_size if self.tree else 0,
            num_prompt_tokens=counters.num_prompt_tokens,
            num_cached_tokens=counters.num_cached_tokens,
            num_extend_tokens=counters.num_extend_tokens,
            num_decode_tokens=counters.num_decode_tokens,
            prefill_tokens_per_s=counters.num_extend_tokens / extend_s if extend_s else 0.0,
            decode_tokens_per_s=counters.num_decode_tokens / decode_s if decode_s else 0.0,
            num_decode_steps=counters.num_decode_steps,
            num_forced_tokens=counters.num_forced_tokens,
            decode_batch_sizes=dict(counters.decode_batch_sizes),
            num_retracted=counters.num_retracted,
            num_finished=counters.num_finished,
        )

    def check_integrity(self) -> None:
        """Raise if a KV slot is leaked or owned twice, or a lock count is off (tests)."""
        active = self.scheduler.active_requests()
        own = [r.own_slots for r in active]
        if self.tree is not None:
            locked = [r.last_node for r in active if r.last_node is not None]
            self.tree.check_integrity(own, locked_nodes=locked)
            return
        num_owned = sum(len(s) for s in own)
        allocator = self.kv_pool.allocator
        if num_owned + allocator.num_free != allocator.num_slots:
            raise IntegrityError(f"{num_owned} owned + {allocator.num_free} free slots != total")


def _collect(stream: OutputStream) -> Completion:
    parts = []
    while True:
        chunk = stream.get_sync()
        parts.append(chunk.text)
        if chunk.meta is not None:
            return Completion("".join(parts), chunk.meta)
