"""Admission: which waiting requests start this step, on which cached prefix, with how much memory.

Admission reserves a request's whole remaining prompt plus `new_token_ratio` of its remaining
output, rounded up to whole pages, against free + evictable slots minus what the admitted
requests reserved. It walks the
waiting queue in policy order (policy.py) and stops at the first request that does not fit, so
memory is never promised twice. A zero-token request (`cache_prefix`) whose prompt is cached
already needs no step at all.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from sgl_lang.runtime.batch import ExtendChunk
from sgl_lang.runtime.cache_manager import CacheManager
from sgl_lang.runtime.config import EngineConfig
from sgl_lang.runtime.pages import num_pages_for
from sgl_lang.runtime.policy import admission_order, shares_uncached_prefix
from sgl_lang.runtime.request import Request, RequestKind
from sgl_lang.runtime.stats import SchedulerCounters


class Admitted(NamedTuple):
    """What `Admission.admit` decided: the first chunks of newly admitted requests, and the
    zero-token requests whose whole prompt was cached already (done without a step)."""

    chunks: list[ExtendChunk]
    cached: list[Request]


class Admission:
    """Admits waiting requests while the step's token budget, the running limit and the memory
    allow; each admitted request locks its matched prefix."""

    def __init__(
        self, config: EngineConfig, memory: CacheManager, counters: SchedulerCounters
    ) -> None:
        self.config = config
        self.memory = memory
        self.counters = counters

    def admit(
        self,
        waiting: list[Request],
        prefilling: list[Request],
        running: list[Request],
        num_steps: int,
        budget: int,
    ) -> Admitted:
        """Admit from `waiting` (left there: the caller moves them) next to the requests already
        `prefilling` and `running`, within `budget` tokens; `num_steps` ages the queue."""
        cfg, memory = self.config, self.memory
        cache = memory.prefix_cache
        num_slots_left = memory.allocator.num_free_slots - self._reserved_slots(
            prefilling + running
        )
        extending = prefilling.copy()  # for in-batch prefix sharing
        admitted = Admitted([], [])
        num_active = len(prefilling) + len(running)
        for req, _ in admission_order(waiting, num_steps, cfg, memory.match):
            if budget <= 0 or num_active >= cfg.max_running_requests:
                break
            match = memory.match(req)  # again: a copy page taken since may have evicted it
            match_len = len(match.slots)
            if req.kind is RequestKind.PREFILL and match_len == req.fill_len:
                self._count_admission(req, match_len)
                admitted.cached.append(req)
                continue
            if cfg.enable_cache and shares_uncached_prefix(
                req, extending, match_len, cfg.in_batch_share_min_tokens
            ):
                continue  # computed by an admitted request first, then matched next step
            cache.lock(match.last_node)
            num_needed = self._slots_needed(req, match_len - match_len % memory.page_size)
            if num_needed > num_slots_left + cache.evictable_size or not memory.borrow(req, match):
                cache.unlock(match.last_node)
                break
            num_slots_left -= num_needed
            self._count_admission(req, match_len)
            num = min(budget, req.fill_len - match_len)
            admitted.chunks.append(ExtendChunk(req, num))
            extending.append(req)
            budget -= num
            num_active += 1
        return admitted

    def _reserve_output(self, req: Request) -> int:
        """Slots reserved for `req`'s future output tokens, capped so that a lone request fits."""
        num_left = max(0, req.max_new_tokens - len(req.output_ids))
        num = math.ceil(self.config.new_token_ratio * num_left)
        return max(0, min(num, self.memory.allocator.num_slots - req.fill_len))

    def _slots_needed(self, req: Request, num_held: int) -> int:
        """Slots of the new pages `req` expects to take (rest of prompt + output) beyond the
        `num_held` tokens its pages hold already."""
        size = self.memory.page_size
        num_tokens = req.fill_len + self._reserve_output(req)
        return (num_pages_for(num_tokens, size) - num_pages_for(num_held, size)) * size

    def _reserved_slots(self, active: list[Request]) -> int:
        """Slots the admitted requests still expect to take."""
        return sum(self._slots_needed(r, r.kv_len) for r in active)

    def _count_admission(self, req: Request, match_len: int) -> None:
        if req.num_cached_tokens is None:  # a retracted request counts once
            req.num_cached_tokens = min(match_len, len(req.prompt_ids))
            self.counters.num_prompt_tokens += len(req.prompt_ids)
            self.counters.num_cached_tokens += req.num_cached_tokens


def check_fits(req: Request, max_context_len: int, num_slots: int) -> str | None:
    """Why `req` can never run (too long for the context or the KV pool), or None."""
    num_prompt = len(req.prompt_ids)
    limit = max_context_len - (req.kind is RequestKind.GENERATE)
    if num_prompt == 0:
        return "the prompt is empty"
    if num_prompt > limit:
        return f"the prompt has {num_prompt} tokens; the model context allows {limit}"
    needed = num_prompt + (req.kind is RequestKind.GENERATE)
    if needed > num_slots:
        return f"the request needs {needed} KV slots; the pool has {num_slots}"
    return None
