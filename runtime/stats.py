"""Counters the scheduler keeps, and the snapshot `Engine.stats()` returns."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


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
    decode_batch_sizes: Counter[int] = field(default_factory=Counter)


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
