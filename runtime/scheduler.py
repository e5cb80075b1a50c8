"""Continuous batching: which requests run next (cache-aware), and what their results do.

Every step is either an EXTEND batch (prompt chunks of admitted requests, at most
`prefill_chunk_tokens` tokens) or a DECODE batch (one token for every decoding request); when
both kinds have work they alternate, so a long prompt never stalls decoding for long.

Memory: a request's KV is its `slots` (see `Request`). Admission reserves its whole remaining
prompt plus `new_token_ratio` of its remaining output against free + evictable slots minus what
running requests reserved. A decode step that finds no free slot evicts from the tree, then
retracts the running request with the least progress (its computed KV goes to the tree, its
tokens stay, it waits again). After every extend chunk, and when a request finishes, its
computed tokens are inserted into the tree (unless `enable_cache` is off: then nothing is ever
matched or inserted, and a finished request frees all its slots).

Jump-forward: after a sampled token, the tokens its constraint forces (the only one allowed) are
appended at once; the next decode step extends the request by all of them.
"""

from __future__ import annotations

import math

import torch

from sgl_lang.runtime.batch import (
    BatchKind,
    ScheduledBatch,
    decode_batch,
    extend_batch,
    prompt_logprobs,
)
from sgl_lang.runtime.config import EngineConfig
from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.policy import admission_order, shares_uncached_prefix
from sgl_lang.runtime.policy import match_len as policy_match_len
from sgl_lang.runtime.radix_cache import MatchResult, RadixCache
from sgl_lang.runtime.request import FinishReason, Request, RequestKind, RequestStatus
from sgl_lang.runtime.sampling import Sampler
from sgl_lang.runtime.stats import SchedulerCounters


class Scheduler:
    """Owns the queues; `schedule()` builds the next batch, `postprocess()` consumes its logits."""

    def __init__(
        self,
        config: EngineConfig,
        kv_pool: KVPool,
        tree: RadixCache | None,
        sampler: Sampler,
        eos_token_ids: tuple[int, ...],
        max_context_len: int,
    ) -> None:
        self.config = config
        self.allocator = kv_pool.allocator
        self.tree = tree if config.enable_cache else None
        self.sampler = sampler
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_context_len = max_context_len
        self.waiting: list[Request] = []
        self.prefilling: list[Request] = []  # admitted, prompt not fully extended yet
        self.running: list[Request] = []  # decoding
        self.num_steps = 0
        self.last_kind: BatchKind | None = None
        self.counters = SchedulerCounters()

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    def active_requests(self) -> list[Request]:
        return self.prefilling + self.running

    # -- requests in and out -------------------------------------------------------------

    def add(self, req: Request) -> None:
        """Queue `req`, or finish it at once with an error if it can never run."""
        error = self._check_fits(req)
        if error is not None:
            self._finish(req, FinishReason.ERROR, error)
            return
        req.status, req.enqueue_step = RequestStatus.WAITING, self.num_steps
        self.waiting.append(req)

    def _check_fits(self, req: Request) -> str | None:
        num_prompt = len(req.prompt_ids)
        limit = self.max_context_len - (req.kind is RequestKind.GENERATE)
        if num_prompt == 0:
            return "the prompt is empty"
        if num_prompt > limit:
            return f"the prompt has {num_prompt} tokens; the model context allows {limit}"
        needed = num_prompt + (req.kind is RequestKind.GENERATE)
        if needed > self.allocator.num_slots:
            return f"the request needs {needed} KV slots; the pool has {self.allocator.num_slots}"
        return None

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
        """The next batch, or None when there is nothing to run."""
        self.num_steps += 1
        while True:
            if self.running and self.last_kind is BatchKind.EXTEND:
                batch = self._schedule_decode() or self._schedule_extend()
            else:
                batch = self._schedule_extend() or self._schedule_decode()
            if batch is not None or len(self.prefilling) < 2:
                break
            self._retract(min(self.prefilling, key=_progress))  # over-committed: make room
        self.last_kind = batch.kind if batch else None
        return batch

    def _schedule_extend(self) -> ScheduledBatch | None:
        budget = self.config.prefill_chunk_tokens
        chunks: list[tuple[Request, int]] = []
        for req in self.prefilling:
            if budget > 0:
                num = min(budget, req.fill_len - req.kv_len)
                chunks.append((req, num))
                budget -= num
        if budget > 0:
            chunks += self._admit(budget)
        for req, _ in chunks:
            if req.status is RequestStatus.WAITING:
                self.waiting.remove(req)
                self.prefilling.append(req)
                req.status = RequestStatus.PREFILLING
        return self._build_extend(chunks) if chunks else None

    def _admit(self, budget: int) -> list[tuple[Request, int]]:
        """Admit waiting requests in policy order while the token budget, the running limit and
        the memory allow; returns (request, chunk tokens) pairs."""
        cfg = self.config
        num_slots_left = self.allocator.num_free - self._reserved_tokens()
        admitted: list[Request] = self.prefilling.copy()  # for in-batch prefix sharing
        chunks: list[tuple[Request, int]] = []
        num_active = len(self.prefilling) + len(self.running)
        match_fn = self._match if self.tree is not None else None
        for req, match in admission_order(self.waiting, self.num_steps, cfg, match_fn):
            if budget <= 0 or num_active >= cfg.max_running_requests:
                break
            match = match or self._match(req)
            match_len = policy_match_len(match)
            if req.kind is RequestKind.PREFILL and match_len == req.fill_len:
                self._account_admission(req, match_len)
                self.waiting.remove(req)
                self._finish(req, FinishReason.STOP)  # a cache_prefix already cached
                continue
            if self.tree and shares_uncached_prefix(
                req, admitted, match_len, cfg.in_batch_share_min_tokens
            ):
                continue  # computed by an admitted request first, then matched next step
            if match is not None:
                self.tree.lock(match.last_node)
            evictable = self.tree.evictable_size if self.tree else 0
            num_needed = req.fill_len - match_len + self._reserve_output(req)
            if num_needed > num_slots_left + evictable:
                if match is not None:
                    self.tree.unlock(match.last_node)
                break
            num_slots_left -= num_needed
            if match is not None:
                req.slots, req.tree_len, req.last_node = match.slots, match_len, match.last_node
            self._account_admission(req, match_len)
            num = min(budget, req.fill_len - match_len)
            chunks.append((req, num))
            admitted.append(req)
            budget -= num
            num_active += 1
        return chunks

    def _account_admission(self, req: Request, match_len: int) -> None:
        if req.num_cached_tokens is None:
            req.num_cached_tokens = min(match_len, len(req.prompt_ids))
            self.counters.num_prompt_tokens += len(req.prompt_ids)
            self.counters.num_cached_tokens += req.num_cached_tokens

    def _match(self, req: Request) -> MatchResult | None:
        if self.tree is None or req.max_match_len == 0:
            return None
        return self.tree.match_prefix(req.fill_ids[: req.max_match_len])

    def _reserve_output(self, req: Request) -> int:
        """Slots reserved for `req`'s future output tokens, capped so that a lone request fits."""
        num_left = max(0, req.max_new_tokens - len(req.output_ids))
        num = math.ceil(self.config.new_token_ratio * num_left)
        return max(0, min(num, self.allocator.num_slots - req.fill_len))

    def _reserved_tokens(self) -> int:
        """Slots the admitted requests still expect to take (rest of prompt + output)."""
        return sum(
            r.fill_len - r.kv_len + self._reserve_output(r) for r in self.prefilling + self.running
        )

    def _build_extend(self, chunks: list[tuple[Request, int]]) -> ScheduledBatch | None:
        allocated = []
        for req, num in chunks:
            num = min(num, self._num_allocatable())
            new_slots = self._alloc(num) if num > 0 else None
            if new_slots is None:
                continue  # over-committed memory: wait, or be retracted
            req.slots = torch.cat((req.slots, new_slots))
            allocated.append((req, num))
        return extend_batch(allocated) if allocated else None

    def _schedule_decode(self) -> ScheduledBatch | None:
        while self.running and not self._make_room(
            sum(r.fill_len - r.kv_len for r in self.running)
        ):
            if len(self.running) + len(self.prefilling) == 1:
                self._finish(self.running[0], FinishReason.LENGTH)  # alone and the pool is full
            else:
                self._retract(min(self.active_requests(), key=_progress))
        if not self.running:
            return None
        reqs = self.running.copy()
        nums = [r.fill_len - r.kv_len for r in reqs]  # 1, or more after jump-forward
        new_slots = self._alloc(sum(nums))
        assert new_slots is not None
        for req, slots in zip(reqs, new_slots.split(nums), strict=True):
            req.slots = torch.cat((req.slots, slots))
        return decode_batch(reqs, new_slots, nums)

    # -- memory --------------------------------------------------------------------------

    def _num_allocatable(self) -> int:
        return self.allocator.num_free + (self.tree.evictable_size if self.tree else 0)

    def _make_room(self, num: int) -> bool:
        if self.allocator.num_free < num and self.tree is not None:
            self.tree.evict(num - self.allocator.num_free)
        return self.allocator.num_free >= num

    def _alloc(self, num: int) -> torch.Tensor | None:
        return self.allocator.alloc(num) if self._make_room(num) else None

    def _retract(self, req: Request) -> None:
        """Give back `req`'s slots and requeue it at the front; its tokens are kept."""
        (self.running if req in self.running else self.prefilling).remove(req)
        self._release(req)
        req.status, req.enqueue_step = RequestStatus.WAITING, self.num_steps
        self.waiting.insert(0, req)
        self.counters.num_retracted += 1

    def _cache_computed(self, req: Request) -> None:
        """Insert `req`'s computed tokens into the tree and borrow them back from it, locked."""
        assert self.tree is not None
        ids = req.fill_ids[: req.kv_len]
        num_cached = self.tree.insert(ids, req.slots)
        if num_cached > req.tree_len:  # another request cached these meanwhile: ours are dups
            self.allocator.free(req.slots[req.tree_len : num_cached])
        match = self.tree.match_prefix(ids)
        self.tree.lock(match.last_node)
        if req.last_node is not None:
            self.tree.unlock(req.last_node)
        req.slots, req.tree_len, req.last_node = match.slots, req.kv_len, match.last_node

    def _release(self, req: Request) -> None:
        """Hand `req`'s slots back: to the tree (cache on) or to the free list."""
        if self.tree is not None and req.kv_len > req.tree_len:
            self._cache_computed(req)
        elif req.kv_len > req.tree_len:
            self.allocator.free(req.own_slots)
        if req.last_node is not None:
            self.tree.unlock(req.last_node)
        req.slots, req.tree_len, req.last_node = req.slots[:0], 0, None

    # -- results -------------------------------------------------------------------------

    def postprocess(self, batch: ScheduledBatch, logits: torch.Tensor) -> None:
        """Record prompt log-probs, cache computed prefixes, sample, stream and finish."""
        to_sample: list[tuple[Request, int]] = []
        if batch.kind is BatchKind.DECODE:
            self.counters.num_decode_steps += 1
            self.counters.num_decode_tokens += len(batch.requests)
            self.counters.decode_batch_sizes[len(batch.requests)] += 1
            to_sample = list(zip(batch.requests, batch.first_rows, strict=True))
        else:
            self.counters.num_extend_steps += 1
            self.counters.num_extend_tokens += batch.forward.num_tokens
        for i, req in enumerate(batch.requests if batch.kind is BatchKind.EXTEND else ()):
            row, num_rows = batch.first_rows[i], batch.num_logprob_rows[i]
            if num_rows:
                rows = logits[row : row + num_rows]
                req.prompt_logprobs += prompt_logprobs(req, batch.forward.extend_lens[i], rows)
            if self.tree is not None:
                self._cache_computed(req)
            if req.kv_len < req.fill_len:
                continue  # more chunks to come
            self.prefilling.remove(req)
            if req.kind is RequestKind.PREFILL:
                self._finish(req, FinishReason.STOP)
                continue
            req.status = RequestStatus.DECODING
            self.running.append(req)
            to_sample.append((req, row + num_rows))
        if to_sample:
            reqs = [r for r, _ in to_sample]
            result = self.sampler.sample(
                logits[[row for _, row in to_sample]],
                [r.params for r in reqs],
                [r.output_ids for r in reqs],
                [r.generator for r in reqs],
            )
            token_ids, logprobs = result.token_ids.tolist(), result.logprobs.tolist()
            for req, token_id, logprob in zip(reqs, token_ids, logprobs, strict=True):
                self._append_token(req, token_id, logprob)

    def _append_token(self, req: Request, token_id: int, logprob: float) -> None:
        """Append a sampled token, then the tokens its constraint forces (jump-forward)."""
        reason = self._push_token(req, token_id, logprob)
        jump = self.config.jump_forward and not req.params.return_logprobs
        while reason is None and jump and req.constraint is not None:
            if (forced_id := req.constraint.forced_token()) is None:
                break
            self.counters.num_forced_tokens += 1
            reason = self._push_token(req, forced_id, math.nan)  # no forward: no log-prob
        if reason is not None:
            self._finish(req, reason)

    def _push_token(self, req: Request, token_id: int, logprob: float) -> FinishReason | None:
        """Record and stream one output token; why the request must finish now, if it must."""
        req.output_ids.append(token_id)
        params = req.params
        if params.return_logprobs:
            req.output_logprobs.append(logprob)
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

    def _finish(self, req: Request, reason: FinishReason, error: str | None = None) -> None:
        for queue in (self.waiting, self.prefilling, self.running):
            if req in queue:
                queue.remove(req)
        self._release(req)
        req.status, req.finish_reason, req.error = RequestStatus.FINISHED, reason, error
        self.counters.num_finished += 1
        tail = ""
        if req.decoder is not None and not req.decoder.stopped and reason is not FinishReason.ERROR:
            tail = req.decoder.flush()
        req.emit_final(tail)


def _progress(req: Request) -> tuple[int, int]:
    """Retraction order: fewest output tokens first, then the latest arrival."""
    return len(req.output_ids), -req.arrival
