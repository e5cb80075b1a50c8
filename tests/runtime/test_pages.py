"""KV pages: the allocator and layout arithmetic, whole-page eviction, a cached prefix's partial
last page copied and reused whole, greedy outputs the same at page sizes 1 and 32 with the cache
on or off, and mixed decode + prefill steps giving the tokens of separate runs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import greedy, run_all, run_steps, token_ids

from sgl_lang.runtime.batch import BatchKind
from sgl_lang.runtime.cache_integrity import IntegrityError
from sgl_lang.runtime.cache_manager import CacheManager
from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.pages import PageAllocator, page_slots, slot_pages
from sgl_lang.runtime.radix_cache import RadixCache
from sgl_lang.runtime.request import OutputStream, Request, RequestKind
from sgl_lang.runtime.sampling import SamplingParams

PAGE_SIZES = (1, 32)  # the engine tests below run with pages of 1 and of 32 slots


def test_pages_are_handed_out_whole_and_laid_out_by_offset() -> None:
    allocator = PageAllocator(3, page_size=4)
    assert (allocator.num_slots, allocator.num_free_slots) == (12, 12)
    pages = allocator.alloc(2)
    assert pages is not None and pages.tolist() == [1, 2]
    assert (allocator.num_free_pages, allocator.num_used_pages, allocator.num_free_slots) == (
        1,
        2,
        4,
    )
    slots = page_slots(torch.tensor([2, 1]), 4, num_tokens=6)
    assert slots.tolist() == [8, 9, 10, 11, 4, 5]
    assert slot_pages(slots, 4).tolist() == [2, 1]


def paged_tree() -> RadixCache:
    """Pages of 4: [1..6] at pages 1, 2; then [1..5, 7, 8] by a request that copied token 5
    into its page 3: the node [1..5] and the leaf [6] share page 2."""
    cache = RadixCache(PageAllocator(4, page_size=4))
    assert cache.allocator.alloc(3) is not None
    assert cache.insert([1, 2, 3, 4, 5, 6], torch.tensor([4, 5, 6, 7, 8, 9])) == 0
    assert cache.insert([1, 2, 3, 4, 5, 7, 8], torch.tensor([4, 5, 6, 7, 12, 13, 14])) == 5
    cache.check_integrity()
    return cache


def test_eviction_frees_a_page_only_when_no_node_holds_it() -> None:
    cache = paged_tree()
    assert cache.evict(1) == 1  # the leaf [6]: page 2 still holds [5]
    assert cache.allocator.free_pages.tolist() == [4]
    cache.check_integrity()
    assert cache.evict(1) == 2  # the leaf [7, 8] and its page 3
    assert cache.allocator.free_pages.tolist() == [4, 3]
    assert cache.evict(1) == 5
    assert cache.allocator.free_pages.tolist() == [4, 3, 1, 2]
    cache.check_integrity()


def test_integrity_catches_a_token_off_its_page_offset_and_wrong_page_counts() -> None:
    cache = paged_tree()
    node = cache.match_prefix([1, 2, 3, 4, 5, 7]).last_node
    node.value = node.value + 1
    with pytest.raises(IntegrityError, match="page offset other than its position's"):
        cache.check_integrity()
    node.value = node.value - 1
    cache._page_refs[2] += 1
    with pytest.raises(IntegrityError, match="page reference counts"):
        cache.check_integrity()


def test_a_partial_cached_page_is_copied_into_a_page_of_the_request() -> None:
    pool = KVPool(1, 16, 1, 1, page_size=4)
    memory = CacheManager(pool, RadixCache(pool.allocator))
    first = Request("a", 0, [1, 2, 3, 4, 5, 6], SamplingParams(), kind=RequestKind.PREFILL)
    match = memory.match(first)
    memory.prefix_cache.lock(match.last_node)
    assert memory.borrow(first, match)
    assert memory.grow(first, 6) is not None
    assert first.slots.tolist() == [4, 5, 6, 7, 8, 9]
    pool.k[0][first.slots] = torch.arange(10.0, 16.0).view(6, 1, 1)  # the forward
    memory.release(first)
    second = Request("b", 1, [1, 2, 3, 4, 5, 9, 9], SamplingParams(), kind=RequestKind.PREFILL)
    match = memory.match(second)
    memory.prefix_cache.lock(match.last_node)
    assert memory.borrow(second, match)
    assert second.slots.tolist() == [4, 5, 6, 7, 12]  # page 1 borrowed, token 5 copied to page 3
    assert (second.tree_len, second.kv_len) == (4, 5)
    assert pool.k[0][12].item() == 14.0
    assert memory.grow(second, 2) is not None
    assert second.slots[5:].tolist() == [13, 14]
    memory.check_integrity([second])
    assert memory.own_pages(second).tolist() == [3]


@pytest.mark.model
@pytest.mark.parametrize("kernels", ["torch"])  # page size 1 is the torch kernels' alone
def test_real_model_greedy_and_cached_tokens_agree_across_page_sizes_and_cache(
    real_model: Any, make_engine: Any
) -> None:
    stem = real_model.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 6)
    prompts = [[*stem[:num], 350 + num] for num in (20, 31, 33, 45)]  # each shares the last's
    params = greedy(3, ignore_eos=True)

    def outputs(**options: Any) -> list[tuple[tuple[int, ...], int]]:
        engine = make_engine(model=real_model, kv_cache_tokens=512, **options)
        done = [run_all(engine, [ids], params)[0] for ids in prompts]  # one after the other
        return [(c.meta.output_ids, c.meta.cached_tokens) for c in done]

    expected = outputs(page_size=1)
    assert [cached for _, cached in expected] == [0, 20, 31, 33]
    assert outputs(page_size=32) == expected
    no_cache = outputs(page_size=32, enable_cache=False)
    assert [ids for ids, _ in no_cache] == [ids for ids, _ in expected]


def test_a_prefix_ending_mid_page_is_reused_whole(make_engine: Any, page_size: int) -> None:
    engine = make_engine(page_size=page_size)
    first = token_ids(1, 45)
    second = first[:40] + token_ids(2, 10)
    run_all(engine, [first], greedy(4))
    reused = run_all(engine, [second], greedy(4))[0]
    assert reused.meta.cached_tokens == 40
    uncached = make_engine(page_size=page_size, enable_cache=False)
    assert reused.meta.output_ids == run_all(uncached, [second], greedy(4))[0].meta.output_ids


def test_mixed_steps_give_the_tokens_of_separate_runs(make_engine: Any, page_size: int) -> None:
    engine = make_engine(page_size=page_size, prefill_chunk_tokens=64)
    short, long = token_ids(3, 20), token_ids(4, 150)
    first = OutputStream()
    engine.submit(short, greedy(12), stream=first)
    engine.step()  # the short prompt's extend; it decodes from now on
    second = OutputStream()
    engine.submit(long, greedy(4), stream=second)
    kinds = []
    while engine.step():
        kinds.append(engine.scheduler.last_kind)
        engine.check_integrity()
    assert kinds[:3] == [BatchKind.MIXED] * 3  # one decode row + a 63-token chunk, 3 times
    together = [collect_ids(first), collect_ids(second)]
    separate = [
        run_all(make_engine(page_size=page_size), [ids], greedy(n))[0].meta.output_ids
        for ids, n in ((short, 12), (long, 4))
    ]
    assert together == separate
    run_steps(engine)


def collect_ids(stream: OutputStream) -> tuple[int, ...]:
    while (chunk := stream.get_sync(timeout=60)).meta is None:
        pass
    return chunk.meta.output_ids
