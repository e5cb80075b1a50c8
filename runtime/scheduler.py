"""Continuous batching: which requests run next, and what their results do.

Every step runs one forward over a decode row for every decoding request (its next token) and
prompt chunks of admitted requests (chunked prefill) in the rest of the `prefill_chunk_tokens`
budget: decoding never waits for a long prompt, and a prompt never waits for decoding.

The parts: `Admission` (admission.py) starts waiting requests in policy order (policy.py)
within the memory; `CacheManager` (cache_manager.py) holds their KV slots; batch.py lays out
the tokens of a step. A decode step that finds no free slot evicts from the prefix cache, then
retracts the running request with the least progress (its computed KV goes to the cache, its
tokens stay, it waits again). After every extend chunk, and when a request finishes, its
computed tokens are offered to the prefix cache (with `enable_cache` off, the no-op cache keeps
none of them: a finished request frees all its slots).

Jump-forward: after a sampled token, the tokens its constraint forces (the only one allowed) are
appended at once; the next decode step extends the request by all of them.
"""

from __future__ import annotations

import math

import torch

from sgl_lang.runtime.admission import Admission, check_fits
from sgl_lang.runtime.batch import (
    BatchKind,
    ExtendChunk,
    SampleRow,
    ScheduledBatch,
    extend_batch,
    record_prompt_logprobs,
)
from sgl_lang.runtime.cache_manager import CacheManager
from sgl_lang.runtime.config import EngineConfig
from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.prefix_cache import PrefixCache
from sgl_lang.runtime.request import FinishReason, Request, RequestKind, RequestStatus
from sgl_lang.runtime.sampling import Sampler, TopLogprobs
from sgl_lang.runtime.stats import SchedulerCounters


class Scheduler:
    """Owns the queues; `schedule()` builds the next batch, `postprocess()` consumes its logits."""

    def __init__(
        self,
        config: EngineConfig,
        kv_pool: KVPool,
        prefix_cache: PrefixCache,
        sampler: Sampler,
        eos_token_ids: tuple[int, ...],
        max_context_len: int,
    ) -> None:
        self.config = config
        self.memory = CacheManager(kv_pool, prefix_cache)
        self.counters = SchedulerCounters()
        self.admission = Admission(config, self.memory, self.counters)
        self.sampler = sampler
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_context_len = max_context_len
        self.waiting: list[Request] = []
        self.prefilling: list[Request] = []  # admitted, prompt not fully extended yet
        self.running: list[Request] = []  # decoding
        self.num_steps = 0
        self.last_kind: BatchKind | None = None

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    def active_requests(self) -> list[Request]:
        return self.prefilling + self.running

    # -- requests in and out -------------------------------------------------------------

    def add(self, req: Request) -> None:
        """Queue `req`, or finish it at once with an error if it can never run."""
        error = check_fits(req, self.max_context_len, self.memory.allocator.num_slots)
        if error is not None:
            self._finish(req, FinishReason.ERROR, error)
            return
        req.status, req.enqueue_step = RequestStatus.WAITING, self.num_steps
        self.waiting.append(req)

    def abort(self, rid: str) -> bool:
        """Finish request `rid` with ABORT, freeing its slots; False if it is not here."""
        for queue in (self.waiting, self.prefilling, self.running):
            for req in queue:
                if req.rid == rid:
                    self._finish(req, FinishReason.ABORT)
                    return True
        return False

    # -- scheduling ----------------------------------------------------------------------

    def schedule(self) -> ScheduledBatch | None:
        """The next batch (decode rows first, then prompt chunks), or None when there is
        nothing to run."""
        self.num_steps += 1
        while True:
            decode_chunks = self._schedule_decode()
            budget = self.config.prefill_chunk_tokens - sum(num for _, num in decode_chunks)
            chunks = decode_chunks + self._schedule_extend(budget)
            if chunks or len(self.prefilling) < 2:
                break
            self._retract(min(self.prefilling, key=_progress))  # over-committed: make room
        batch = extend_batch(chunks) if chunks else None
        self.last_kind = batch.kind if batch else None
        return batch

    def _schedule_extend(self, budget: int) -> list[ExtendChunk]:
        """Prompt chunks of the prefilling requests, then of newly admitted ones, within
        `budget` tokens, their slots allocated."""
        chunks: list[ExtendChunk] = []
        for req in self.prefilling:
            if budget > 0:
                num = min(budget, req.fill_len - req.kv_len)
                chunks.append(ExtendChunk(req, num))
                budget -= num
        if budget > 0:
            admitted = self.admission.admit(
                self.waiting, self.prefilling, self.running, self.num_steps, budget
            )
            for req in admitted.cached:
                self._finish(req, FinishReason.STOP)
            chunks += admitted.chunks
        for req, _ in chunks:
            if req.status is RequestStatus.WAITING:
                self.waiting.remove(req)
                self.prefilling.append(req)
                req.status = RequestStatus.PREFILLING
        allocated = []
        for req, num in chunks:
            num = min(num, self.memory.num_growable(req))
            if num <= 0 or self.memory.grow(req, num) is None:
                continue  # over-committed memory: wait, or be retracted
            allocated.append(ExtendChunk(req, num))
        return allocated

    def _schedule_decode(self) -> list[ExtendChunk]:
        """A decode row for every running request: the output tokens not in its KV yet, their
        slots allocated (evicting, then retracting, when memory is short)."""
        memory = self.memory
        while self.running and not memory.make_room(
            sum(memory.num_pages_to_grow(r, r.fill_len - r.kv_len) for r in self.running)
        ):
            if len(self.running) + len(self.prefilling) == 1:
                self._finish(self.running[0], FinishReason.LENGTH)  # alone and the pool is full
            else:
                self._retract(min(self.active_requests(), key=_progress))
        rows = [ExtendChunk(r, r.fill_len - r.kv_len) for r in self.running]  # 1, or more after
        for req, num in rows:  # jump-forward; room was made above, so `grow` succeeds
            memory.grow(req, num)
        return rows

    def _retract(self, req: Request) -> None:
        """Give back `req`'s slots and requeue it at the front; its tokens are kept."""
        (self.running if req in self.running else self.prefilling).remove(req)
        self.memory.release(req)
        req.status, req.enqueue_step = RequestStatus.WAITING, self.num_steps
        self.waiting.insert(0, req)
        self.counters.num_retracted += 1

    # -- results -------------------------------------------------------------------------

    def postprocess(self, batch: ScheduledBatch, logits: torch.Tensor) -> None:
        """Count the step; record prompt log-probs and cache what the prompt chunks computed
        (a complete prompt starts decoding); then sample the next tokens."""
        self.counters.count_batch(batch)
        self._record_prompt_logprobs(batch, logits)
        self._cache_extended(batch.requests[batch.num_decode_rows :])
        self._sample(batch.sample_rows, logits)

    def _record_prompt_logprobs(self, batch: ScheduledBatch, logits: torch.Tensor) -> None:
        """Log-probs of the scored prompt tokens (`logprob_start_len`) this extend computed."""
        for req, first, num_rows, num_new in zip(
            batch.requests,
            batch.first_rows,
            batch.num_logprob_rows,
            batch.forward.extend_lens,
            strict=True,
        ):
            if num_rows:
                rows = logits[first : first + num_rows]
                record_prompt_logprobs(req, num_new, rows)

    def _cache_extended(self, reqs: list[Request]) -> None:
        """Cache each request's computed tokens; a request whose prompt is complete decodes
        next, or finishes if it generates nothing."""
        for req in reqs:
            self.memory.cache_computed(req)
            if req.kv_len < req.fill_len:
                continue  # more chunks to come
            self.prefilling.remove(req)
            if req.kind is RequestKind.PREFILL:
                self._finish(req, FinishReason.STOP)
            else:
                req.status = RequestStatus.DECODING
                self.running.append(req)

    def _sample(self, rows: list[SampleRow], logits: torch.Tensor) -> None:
        """Sample each request's next token from its logits row and append it."""
        if not rows:
            return
        reqs = [r.request for r in rows]
        row_ids = [r.row for r in rows]
        result = self.sampler.sample(
            logits if row_ids == list(range(len(logits))) else logits[row_ids],
            [r.params for r in reqs],
            [r.output_ids for r in reqs],
            [r.generator for r in reqs],
            row_errors=True,
        )
        token_ids, logprobs = result.token_ids.tolist(), result.logprobs.tolist()
        for req, token_id, logprob, top, error in zip(
            reqs, token_ids, logprobs, result.top_logprobs, result.errors, strict=True
        ):
            try:  # a request whose constraint, processor or decoder raises fails alone
                if error is None:
                    self._append_token(req, token_id, logprob, top)
            except Exception as exc:
                error = exc
            if error is not None:
                self._finish(req, FinishReason.ERROR, request_error(error))

    def _append_token(
        self, req: Request, token_id: int, logprob: float, top: TopLogprobs = ()
    ) -> None:
        """Append a sampled token, then the tokens its constraint forces (jump-forward)."""
        reason = self._push_token(req, token_id, logprob, top)
        params = req.params
        jump = self.config.jump_forward and not (params.return_logprobs or params.top_logprobs_num)
        while reason is None and jump and req.constraint is not None:
            if (forced_id := req.constraint.forced_token()) is None:
                break
            self.counters.num_forced_tokens += 1
            reason = self._push_token(req, forced_id, math.nan)  # no forward: no log-prob
        if reason is not None:
            self._finish(req, reason)

    def _push_token(
        self, req: Request, token_id: int, logprob: float, top: TopLogprobs = ()
    ) -> FinishReason | None:
        """Record and stream one output token; why the request must finish now, if it must."""
        req.output_ids.append(token_id)
        params = req.params
        if params.return_logprobs:
            req.output_logprobs.append(logprob)
        if params.top_logprobs_num:
            req.output_top_logprobs.append(top)
        reason, text = None, ""
        is_eos = token_id in self.eos_token_ids and not params.ignore_eos
        if is_eos or token_id in params.stop_token_ids:
            reason = FinishReason.STOP  # the stop token's text is not part of the output
        else:
            text = req.decoder.push(token_id)
            if req.decoder.stopped:
                reason = FinishReason.STOP
        if reason is None and (
            len(req.output_ids) >= params.max_new_tokens or req.fill_len >= self.max_context_len
        ):
            reason = FinishReason.LENGTH
        req.emit(text, (token_id,), (logprob,) if params.return_logprobs else None)
        return reason

    # -- failures ------------------------------------------------------------------------

    def fail_step(self, batch: ScheduledBatch | None, exc: Exception, *, kv_computed: bool) -> None:
        """A step raised: finish its unfinished requests with ERROR, giving back their slots and
        unlocking their prefix nodes. Without `kv_computed` (the forward did not complete, or
        `schedule` raised: `batch` is None) their own slots' KV is not trusted: it is freed, not
        cached. With no batch, the step's requests are the admitted ones and the waiting ones
        that hold slots."""
        if batch is None:
            held = [r for r in self.waiting if r.kv_len or r.last_node is not None]
            reqs = self.active_requests() + held
        else:
            reqs = batch.requests
        self.counters.num_failed_steps += 1
        error = f"internal error in an engine step: {request_error(exc)}"
        for req in reqs:
            if req.finished:
                continue
            if not kv_computed:
                self.memory.discard(req)
            self._finish(req, FinishReason.ERROR, error)

    def fail_all(self, error: str) -> None:
        """Finish every queued and admitted request with ERROR, leaving the memory as it is
        (the engine is stopping: its state is not trusted any more)."""
        for req in self.waiting + self.active_requests():
            req.status, req.finish_reason = RequestStatus.FINISHED, FinishReason.ERROR
            req.error = error
            req.emit_final()
        self.waiting, self.prefilling, self.running = [], [], []

    def _finish(self, req: Request, reason: FinishReason, error: str | None = None) -> None:
        for queue in (self.waiting, self.prefilling, self.running):
            if req in queue:
                queue.remove(req)
        self.memory.release(req)
        req.status, req.finish_reason, req.error = RequestStatus.FINISHED, reason, error
        self.counters.num_finished += 1
        tail = ""
        if req.decoder is not None and not req.decoder.stopped and reason is not FinishReason.ERROR:
            tail = req.decoder.flush()
        req.emit_final(tail)


def request_error(exc: Exception) -> str:
    """What a request that failed on `exc` reports: the message, or the exception's name."""
    return str(exc).strip() or type(exc).__name__


def _progress(req: Request) -> tuple[int, int]:
    """Retraction order: fewest output tokens first, then the latest arrival."""
    return len(req.output_ids), -req.arrival
