"""The PrefixCache contract on both implementations (radix and no-op), the no-op cache's own
behaviour and integrity check, and cache-off engines: same greedy outputs, nothing cached."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from conftest import assert_idle_and_leak_free, greedy, run_all, token_ids

from sgl_lang.runtime.cache_integrity import IntegrityError
from sgl_lang.runtime.cache_manager import CacheManager
from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.pages import PageAllocator
from sgl_lang.runtime.prefix_cache import NoOpPrefixCache, PrefixCache
from sgl_lang.runtime.radix_cache import RadixCache
from sgl_lang.runtime.request import Request
from sgl_lang.runtime.sampling import SamplingParams

PAGE_SIZES = (1, 32)  # every engine test runs with pages of 1 and of 32 slots


def offer(cache: PrefixCache, ids: list[int]) -> torch.Tensor:
    """Insert `ids` at fresh slots as a request does; return the slots the caller still owns."""
    slots = cache.allocator.alloc(len(ids))
    assert slots is not None
    num_cached = cache.insert(ids, slots)
    cache.allocator.free(slots[:num_cached])
    return slots[len(cache.match_prefix(ids).slots) :]


@pytest.mark.parametrize(
    ("cache_class", "num_protected", "num_evictable"), [(RadixCache, 4, 2), (NoOpPrefixCache, 0, 0)]
)
def test_the_caller_owns_exactly_what_the_cache_does_not_keep(
    cache_class: Any, num_protected: int, num_evictable: int
) -> None:
    cache = cache_class(PageAllocator(12))
    own = [offer(cache, [1, 2, 3]), offer(cache, [1, 2, 4, 5]), offer(cache, [7])]
    cache.check_integrity(own, locked_nodes=[])
    kept = cache.match_prefix([1, 2, 4, 5])
    cache.lock(kept.last_node)
    assert (cache.protected_size, cache.evictable_size) == (num_protected, num_evictable)
    cache.check_integrity(own, locked_nodes=[kept.last_node])
    assert cache.evict(100) == num_evictable
    assert cache.match_prefix([1, 2, 4, 5]).slots.tolist() == kept.slots.tolist()
    cache.unlock(kept.last_node)
    cache.check_integrity(own, locked_nodes=[])
    with pytest.raises(IntegrityError, match="page 1 is owned more than once"):
        cache.check_integrity([*own, torch.tensor([1])])


def test_the_no_op_cache_keeps_nothing() -> None:
    allocator = PageAllocator(8)
    cache = NoOpPrefixCache(allocator)
    slots = allocator.alloc(3)
    assert slots is not None
    assert cache.insert([1, 2, 3], slots) == 0
    match = cache.match_prefix([1, 2, 3])
    assert match.slots.tolist() == [] and match.slots.dtype == torch.int64
    assert match.last_node is cache.root and cache.match_prefix([]).last_node is cache.root
    cache.lock(match.last_node)
    assert (cache.evictable_size, cache.protected_size, cache.total_size) == (0, 0, 0)
    assert cache.evict(3) == 0 and allocator.num_free_pages == 5  # the slots are still the caller's
    cache.unlock(match.last_node)
    cache.reset()
    cache.check_integrity([slots])
    with pytest.raises(IntegrityError, match="page 1 is owned more than once: requests x2"):
        cache.check_integrity([slots, slots[:1]])
    with pytest.raises(IntegrityError, match="page 3 is owned by nobody"):
        cache.check_integrity([slots[:2]])


def test_without_a_cache_a_request_keeps_its_slots_and_frees_them_all() -> None:
    pool = KVPool(1, 8, 1, 1)
    allocator = pool.allocator
    memory = CacheManager(pool, NoOpPrefixCache(allocator))
    req = Request("r", 0, [5, 6, 7, 8], SamplingParams(max_new_tokens=2))
    match = memory.match(req)
    memory.prefix_cache.lock(match.last_node)
    memory.borrow(req, match)
    assert memory.grow(req, 4) is not None
    memory.cache_computed(req)
    assert req.slots.tolist() == [1, 2, 3, 4] and req.tree_len == 0
    memory.check_integrity([req])
    memory.release(req)
    assert req.kv_len == 0 and req.last_node is None
    assert allocator.free_pages.tolist() == [5, 6, 7, 8, 1, 2, 3, 4]
    memory.check_integrity([])


def test_cache_off_gives_the_same_greedy_outputs_and_never_reports_cached_tokens(
    make_engine: Any,
) -> None:
    prefix = token_ids(40, 50)
    prompts = [prefix + token_ids(41 + i, 6) for i in range(4)]
    cached, uncached = make_engine(), make_engine(enable_cache=False)
    assert isinstance(uncached.prefix_cache, NoOpPrefixCache)
    for _ in range(2):  # the second round would hit the cache: answers are prefixes too
        with_cache = run_all(cached, prompts, greedy(6))
        without = run_all(uncached, prompts, greedy(6))
        assert [c.meta.output_ids for c in without] == [c.meta.output_ids for c in with_cache]
        assert all(c.meta.cached_tokens == 0 for c in without)
    assert all(c.meta.cached_tokens > 0 for c in with_cache)
    stats = uncached.stats()
    assert (stats.num_cached_tokens, stats.tree_tokens, stats.cache_hit_rate) == (0, 0, 0.0)
    assert stats.num_extend_tokens == 2 * sum(len(p) for p in prompts)
    assert uncached.flush_cache() == 0
    assert_idle_and_leak_free(uncached)


def test_cache_off_prefill_and_scoring_match_cache_on(make_engine: Any) -> None:
    prefix = token_ids(50, 30)
    choices = [" yes", " no", " maybe"]

    def score(engine: Any) -> list[Any]:
        async def both() -> list[Any]:
            meta = await engine.cache_prefix(prefix)
            assert meta.completion_tokens == 0
            return await engine.score(prefix, choices, unconditional=True)

        return asyncio.run(both())

    with_cache = score(make_engine(threaded=True))
    uncached = make_engine(threaded=True, enable_cache=False)
    without = score(uncached)
    for a, b in zip(with_cache, without, strict=True):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(a.token_logprobs), torch.tensor(b.token_logprobs))
        assert a.unconditional_logprobs is not None and b.unconditional_logprobs is not None
        torch.testing.assert_close(
            torch.tensor(a.unconditional_logprobs), torch.tensor(b.unconditional_logprobs)
        )
    stats = uncached.stats()
    assert stats.num_cached_tokens == 0 and stats.tree_tokens == 0
