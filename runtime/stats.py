"""Counters the scheduler keeps, and the snapshot `Engine.stats()` returns."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from sgl_lang.runtime.batch import BatchKind, ScheduledBatch

if TYPE_CHECKING:
    from sgl_lang.runtime.scheduler import Scheduler


@dataclass
class SchedulerCounters:
    """Monotonic counters since the engine started (see EngineStats)."""

    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_extend_tokens: int = 0
    num_decode_tokens: int = 0
    num_decode_steps: int = 0
    num_forced_tokens: int = 0
    num_extend_steps: int = 0
    num_retracted: int = 0
    num_finished: int = 0
    num_failed_steps: int = 0  # steps that raised (their requests failed, the others went on)
    decode_batch_sizes: Counter[int] = field(default_factory=Counter)

    def count_batch(self, batch: ScheduledBatch) -> None:
        """Count one step: its decode rows (one token each) and its prompt tokens; a mixed step
        counts as a decode step and an extend step."""
        num_decode_rows = batch.num_decode_rows
        if num_decode_rows:
            self.num_decode_steps += 1
            self.num_decode_tokens += num_decode_rows
            self.decode_batch_sizes[num_decode_rows] += 1
        if batch.kind is not BatchKind.DECODE:
            self.num_extend_steps += 1
            self.num_extend_tokens += sum(batch.forward.extend_lens[num_decode_rows:])


class EngineHealth(NamedTuple):
    """Whether the engine can serve: its loop runs (not closed, not stopped by a failure it
    could not recover from); `error` says why not."""

    serving: bool
    error: str | None = None


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine: queues, KV use, token counts and rates since it started."""

    num_waiting: int
    num_running: int  # admitted: prefilling or decoding
    kv_slots_used: int  # by running requests and the tree
    kv_slots_total: int
    tree_tokens: int
    num_prompt_tokens: int  # of admitted requests
    num_cached_tokens: int  # prompt tokens served from the prefix cache at admission
    num_extend_tokens: int  # prompt tokens actually computed
    num_decode_tokens: int
    prefill_tokens_per_s: float  # extend tokens / time spent in extend steps
    decode_tokens_per_s: float  # decode tokens / time spent in decode steps
    num_decode_steps: int
    decode_batch_sizes: dict[int, int]  # batch size -> number of decode steps
    num_retracted: int
    num_finished: int
    num_forced_tokens: int = 0  # output tokens a constraint forced (jump-forward: no own step)
    num_failed_steps: int = 0  # steps that raised: their requests failed, the others went on
    kernels: str = "torch"  # the forward's kernel set (runtime/kernels)

    @property
    def cache_hit_rate(self) -> float:
        """Cached prompt tokens / prompt tokens."""
        return self.num_cached_tokens / self.num_prompt_tokens if self.num_prompt_tokens else 0.0

    @property
    def kv_usage(self) -> float:
        return self.kv_slots_used / self.kv_slots_total

    @property
    def mean_decode_batch_size(self) -> float:
        return self.num_decode_tokens / self.num_decode_steps if self.num_decode_steps else 0.0


def snapshot(
    scheduler: Scheduler, busy_seconds: Mapping[BatchKind, float], kernels: str
) -> EngineStats:
    """The engine's stats now, from its scheduler, the seconds spent in each kind of step and
    the name of its kernel set."""
    counters, memory = scheduler.counters, scheduler.memory
    extend_s, decode_s = busy_seconds[BatchKind.EXTEND], busy_seconds[BatchKind.DECODE]
    return EngineStats(
        num_waiting=len(scheduler.waiting),
        num_running=len(scheduler.prefilling) + len(scheduler.running),
        kv_slots_used=memory.allocator.num_used_pages * memory.page_size,
        kv_slots_total=memory.allocator.num_slots,
        tree_tokens=memory.prefix_cache.total_size,
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
        num_failed_steps=counters.num_failed_steps,
        kernels=kernels,
    )
