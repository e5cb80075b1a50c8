"""RadixCache: exact slots after match/insert/split, LRU eviction order, locks, accounting, and
a stateful test against a naive model (a dict of cached prefixes) with check_integrity()
after every step; check_integrity itself is shown to catch corruption."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sgl_lang.runtime.cache_integrity import IntegrityError
from sgl_lang.runtime.cache_manager import CacheManager
from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.pages import PageAllocator, num_pages_for
from sgl_lang.runtime.prefix_cache import TreeNode
from sgl_lang.runtime.radix_cache import RadixCache
from sgl_lang.runtime.request import Request, RequestKind
from sgl_lang.runtime.sampling import SamplingParams


def make_cache(num_slots: int = 16) -> RadixCache:
    return RadixCache(PageAllocator(num_slots))


def put(cache: RadixCache, ids: list[int]) -> int:
    """Cache `ids` the way a finished request does: fresh slots, then free the duplicates."""
    slots = cache.allocator.alloc(len(ids))
    assert slots is not None
    num_cached = cache.insert(ids, slots)
    cache.allocator.free(slots[:num_cached])
    return num_cached


def contents(cache: RadixCache) -> dict[tuple[int, ...], int]:
    """Every cached prefix -> the slot of its last token, read without touching the tree."""
    out: dict[tuple[int, ...], int] = {}
    stack: list[tuple[tuple[int, ...], TreeNode]] = [((), cache.root)]
    while stack:
        prefix, node = stack.pop()
        for i, slot in enumerate(node.value.tolist()):
            out[prefix + node.key[: i + 1]] = slot
        stack.extend((prefix + node.key, child) for child in node.children.values())
    return out


def edges(node: TreeNode) -> dict[tuple[int, ...], object]:
    """The tree's shape: {key: subtree} below `node`."""
    return {child.key: edges(child) for child in node.children.values()}


def test_empty_tree_matches_nothing() -> None:
    cache = make_cache()
    match = cache.match_prefix([1, 2, 3])
    assert match.slots.tolist() == [] and match.slots.dtype == torch.int64
    assert match.last_node is cache.root
    assert (cache.evictable_size, cache.protected_size, cache.total_size) == (0, 0, 0)
    cache.check_integrity()


def test_insert_then_match_returns_exact_slots() -> None:
    cache = make_cache()
    assert cache.insert([7, 8, 9], torch.tensor([5, 3, 9])) == 0
    match = cache.match_prefix([7, 8, 9, 10])
    assert match.slots.tolist() == [5, 3, 9]
    assert match.last_node.key == (7, 8, 9)
    assert cache.match_prefix(torch.tensor([7, 8, 9])).slots.tolist() == [5, 3, 9]
    assert cache.match_prefix([8, 9]).slots.tolist() == []
    assert (cache.evictable_size, cache.protected_size) == (3, 0)


def test_insert_copies_the_slots_it_keeps() -> None:
    cache = make_cache()
    slots = torch.tensor([1, 2])
    cache.insert([4, 5], slots)
    slots[0] = 9
    assert cache.match_prefix([4, 5]).slots.tolist() == [1, 2]


def test_partial_match_splits_the_node() -> None:
    cache = make_cache()
    put(cache, [1, 2, 3, 4])
    node = cache.match_prefix([1, 2, 3, 4]).last_node
    match = cache.match_prefix([1, 2, 9])
    assert match.slots.tolist() == [1, 2]
    assert match.last_node.key == (1, 2) and match.last_node.parent is cache.root
    assert edges(cache.root) == {(1, 2): {(3, 4): {}}}
    # the old node object is the lower half, so a held reference stays valid
    assert node.key == (3, 4) and node.parent is match.last_node
    assert node.value.tolist() == [3, 4]
    assert (cache.evictable_size, cache.protected_size) == (4, 0)
    cache.check_integrity()


def test_insert_returns_the_number_already_cached() -> None:
    cache = make_cache()
    assert put(cache, [1, 2, 3]) == 0  # slots 1 2 3
    assert put(cache, [1, 2, 5, 6]) == 2  # slots 4 5 6 7; 4 and 5 are duplicates
    assert cache.allocator.free_pages.tolist()[-2:] == [4, 5]
    assert edges(cache.root) == {(1, 2): {(3,): {}, (5, 6): {}}}
    assert cache.match_prefix([1, 2, 5, 6]).slots.tolist() == [1, 2, 6, 7]
    assert put(cache, [1, 2, 3]) == 3
    assert put(cache, [1, 2]) == 2
    assert put(cache, []) == 0
    assert cache.total_size == 5
    cache.check_integrity()


def test_insert_inside_a_node_splits_it() -> None:
    cache = make_cache()
    put(cache, [1, 2, 3])
    assert put(cache, [1]) == 1
    assert edges(cache.root) == {(1,): {(2, 3): {}}}
    cache.check_integrity()


def test_insert_rejects_mismatched_slots() -> None:
    cache = make_cache()
    with pytest.raises(ValueError, match="length 2"):
        cache.insert([1, 2], torch.tensor([1]))
    with pytest.raises(ValueError, match="int64"):
        cache.insert([1], torch.tensor([1], dtype=torch.int32))


def test_evict_frees_least_recently_used_leaves_first() -> None:
    cache = make_cache(6)
    put(cache, [1, 1])  # slots 1 2
    put(cache, [2, 2])  # slots 3 4
    put(cache, [3, 3])  # slots 5 6
    cache.match_prefix([1, 1])  # now [2, 2] is the oldest
    assert cache.evict(1) == 2
    assert cache.allocator.free_pages.tolist() == [3, 4]
    assert cache.match_prefix([2, 2]).slots.tolist() == []
    assert cache.evict(3) == 4  # [3, 3] then [1, 1]
    assert cache.allocator.free_pages.tolist() == [3, 4, 5, 6, 1, 2]
    assert cache.total_size == 0 and cache.evict(1) == 0
    cache.check_integrity()


def test_evict_reaches_a_parent_once_its_children_are_gone() -> None:
    cache = make_cache(8)
    put(cache, [1, 2, 3])  # slots 1 2 3
    put(cache, [1, 2, 5, 6])  # slots 6 7 (4 5 were duplicates, freed)
    put(cache, [9])  # slot 8
    cache.match_prefix([9])  # the [1, 2] subtree is now older than [9]
    free_before = cache.allocator.free_pages.tolist()
    assert cache.evict(4) == 5  # (3,), (5, 6), then their parent (1, 2)
    assert cache.allocator.free_pages.tolist() == [*free_before, 3, 6, 7, 1, 2]
    assert edges(cache.root) == {(9,): {}}
    cache.check_integrity()


def test_lock_protects_the_path_from_eviction() -> None:
    cache = make_cache(8)
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 5])
    put(cache, [7, 7])
    node = cache.match_prefix([1, 2, 3]).last_node
    cache.lock(node)
    assert (cache.evictable_size, cache.protected_size, cache.total_size) == (3, 3, 6)
    assert (node.lock_ref, node.parent.lock_ref, cache.root.lock_ref) == (1, 1, 2)
    assert cache.evict(100) == 3  # only (5,) and (7, 7)
    assert edges(cache.root) == {(1, 2): {(3,): {}}}
    assert (cache.evictable_size, cache.protected_size) == (0, 3)
    cache.check_integrity(locked_nodes=[node])
    cache.unlock(node)
    assert (cache.evictable_size, cache.protected_size) == (3, 0)
    assert cache.evict(1) == 1  # (3,): enough; evicted parents are not merged back
    assert edges(cache.root) == {(1, 2): {}}
    assert cache.evict(1) == 2
    cache.check_integrity(locked_nodes=[])


def test_nested_locks_and_splitting_a_locked_node() -> None:
    cache = make_cache()
    put(cache, [1, 2, 3, 4])
    leaf = cache.match_prefix([1, 2, 3, 4]).last_node
    cache.lock(leaf)
    cache.lock(leaf)
    upper = cache.match_prefix([1, 2]).last_node  # splits the locked node
    assert (upper.lock_ref, leaf.lock_ref) == (2, 2)
    assert (cache.evictable_size, cache.protected_size) == (0, 4)
    cache.lock(upper)
    cache.check_integrity(locked_nodes=[leaf, leaf, upper])
    cache.unlock(leaf)
    cache.unlock(leaf)
    assert (cache.evictable_size, cache.protected_size) == (2, 2)
    assert cache.evict(10) == 2
    cache.check_integrity(locked_nodes=[upper])


def test_unlock_of_an_unlocked_or_evicted_node_raises() -> None:
    cache = make_cache()
    put(cache, [1, 2])
    node = cache.match_prefix([1, 2]).last_node
    with pytest.raises(ValueError, match="not locked"):
        cache.unlock(node)
    with pytest.raises(ValueError, match="not locked"):
        cache.unlock(cache.root)
    cache.evict(2)
    with pytest.raises(ValueError, match="no longer in the tree"):
        cache.lock(node)
    cache.check_integrity()


def test_reset_frees_every_slot() -> None:
    cache = make_cache(8)
    put(cache, [1, 2, 3])
    put(cache, [1, 4])
    node = cache.match_prefix([1, 4]).last_node
    cache.lock(node)
    with pytest.raises(RuntimeError, match="locked"):
        cache.reset()
    cache.unlock(node)
    cache.reset()
    assert cache.total_size == 0 and cache.allocator.num_free_pages == 8
    assert edges(cache.root) == {}
    cache.check_integrity()


# -- check_integrity must be able to fail ----------------------------------------------------


def corruptible() -> tuple[RadixCache, TreeNode]:
    cache = make_cache(8)
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 5])
    cache.check_integrity()
    return cache, cache.match_prefix([1, 2, 5]).last_node


def test_integrity_catches_a_slot_owned_twice() -> None:
    cache, _ = corruptible()
    with pytest.raises(
        IntegrityError, match=r"page 1 is owned more than once: tree x1, requests x1"
    ):
        cache.check_integrity([torch.tensor([1])])
    cache.allocator._free_pages = torch.cat((cache.allocator.free_pages, torch.tensor([4])))
    with pytest.raises(IntegrityError, match="page 4 is owned more than once"):
        cache.check_integrity()


def test_integrity_catches_a_leaked_slot() -> None:
    cache, _ = corruptible()
    own = cache.allocator.alloc(2)
    assert own is not None
    assert own.tolist() == [7, 8]
    cache.check_integrity([own])
    with pytest.raises(IntegrityError, match=r"page 7 is owned by nobody \(leaked\)"):
        cache.check_integrity([own[1:]])


def test_integrity_catches_a_slot_out_of_range() -> None:
    cache, _ = corruptible()
    with pytest.raises(IntegrityError, match="out of range"):
        cache.check_integrity([torch.tensor([0])])


def test_integrity_catches_bad_sizes() -> None:
    cache, _ = corruptible()
    cache._evictable_size += 1
    with pytest.raises(IntegrityError, match=r"sizes are \(5, 0\), tree has \(4, 0\)"):
        cache.check_integrity()


def test_integrity_catches_a_value_of_the_wrong_length() -> None:
    cache, node = corruptible()
    node.value = node.value[:0]
    with pytest.raises(IntegrityError, match="value shape"):
        cache.check_integrity()


def test_integrity_catches_inconsistent_locks() -> None:
    cache, node = corruptible()
    cache.lock(node)
    with pytest.raises(IntegrityError, match="mismatches locks"):
        cache.check_integrity(locked_nodes=[])
    node.lock_ref += 1  # the parent now has fewer locks than its child
    with pytest.raises(IntegrityError, match="fewer locks than its children"):
        cache.check_integrity()


def test_integrity_catches_a_broken_link() -> None:
    cache, node = corruptible()
    node.parent = cache.root
    with pytest.raises(IntegrityError, match="wrong parent"):
        cache.check_integrity()


# -- random operations against a naive model -------------------------------------------------

NUM_SLOTS = 24
token_ids = st.lists(st.integers(0, 3), max_size=9)


def kv_code(prefix: Sequence[int]) -> float:
    """The K value a "forward" writes for the last token of `prefix` (its context included)."""
    return float(hash(tuple(prefix)) % 2**20)


class CacheMachine(RuleBasedStateMachine):
    """Requests match, lock, borrow, allocate, compute, cache and release through CacheManager
    as the engine does, on a pool of `PAGE_SIZE`-slot pages whose K values identify what was
    computed. The reference is a dict of cached prefixes (prefix -> slot of its last token) plus
    each prefix's last use."""

    PAGE_SIZE = 1

    def __init__(self) -> None:
        super().__init__()
        self.pool = KVPool(1, NUM_SLOTS, 1, 1, page_size=self.PAGE_SIZE)
        self.cache = RadixCache(self.pool.allocator)
        self.memory = CacheManager(self.pool, self.cache)
        self.expected: dict[tuple[int, ...], int] = {}
        self.last_used: dict[tuple[int, ...], int] = {}
        self.clock = 0
        self.running: list[Request] = []

    def expected_match(self, ids: list[int]) -> list[int]:
        slots = []
        for end in range(1, len(ids) + 1):
            if (slot := self.expected.get(tuple(ids[:end]))) is None:
                break
            slots.append(slot)
        return slots

    def touch(self, ids: list[int], num_tokens: int) -> None:
        self.clock += 1
        for end in range(1, num_tokens + 1):
            self.last_used[tuple(ids[:end])] = self.clock

    def locked_prefixes(self) -> set[tuple[int, ...]]:
        locked = set()
        for req in self.running:
            num_locked = len(self.expected_match(req.prompt_ids[: req.num_cached_tokens]))
            locked |= {tuple(req.prompt_ids[:end]) for end in range(1, num_locked + 1)}
        return locked

    @rule(ids=token_ids)
    def match(self, ids: list[int]) -> None:
        match = self.cache.match_prefix(ids)
        assert match.slots.tolist() == self.expected_match(ids)
        self.touch(ids, len(match.slots))

    @rule(ids=token_ids)
    def start_request(self, ids: list[int]) -> None:
        req = Request(f"r{self.clock}", 0, ids, SamplingParams(), kind=RequestKind.PREFILL)
        match = self.memory.match(req)
        self.touch(ids, len(match.slots))
        self.cache.lock(match.last_node)
        num_matched = len(match.slots)
        num_pages = num_pages_for(len(ids), self.PAGE_SIZE) - num_matched // self.PAGE_SIZE
        while self.pool.allocator.num_free_pages < num_pages and self.cache.evictable_size:
            self.evict(num_pages - self.pool.allocator.num_free_pages)
        if self.pool.allocator.num_free_pages < num_pages:  # no room even after eviction
            self.cache.unlock(match.last_node)
            return
        assert self.memory.borrow(req, match)
        assert (
            req.kv_len == num_matched and req.tree_len == num_matched - num_matched % self.PAGE_SIZE
        )
        new_slots = self.memory.grow(req, len(ids) - num_matched)
        assert new_slots is not None
        codes = [kv_code(ids[: i + 1]) for i in range(num_matched, len(ids))]
        self.pool.k[0][new_slots] = torch.tensor(codes).view(-1, 1, 1)  # the forward
        req.num_cached_tokens = num_matched
        self.running.append(req)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish_request(self, data: st.DataObject) -> None:
        req = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        ids, slots = req.prompt_ids, req.slots
        num_cached = len(self.expected_match(ids))
        offers = req.kv_len > req.tree_len  # else the cache had it all: nothing to offer
        self.memory.release(req)
        for end in range(num_cached + 1, len(ids) + 1):
            self.expected[tuple(ids[:end])] = int(slots[end - 1])
        if offers:
            self.touch(ids, len(ids))

    @rule(num_tokens=st.integers(0, 8))
    def evict(self, num_tokens: int) -> None:
        evictable_before, total_before = self.cache.evictable_size, self.cache.total_size
        num_freed = self.cache.evict(num_tokens)
        assert num_freed == total_before - self.cache.total_size
        assert num_freed >= min(num_tokens, evictable_before)
        now = contents(self.cache)  # a subset of what was cached, with the same slots
        assert now.items() <= self.expected.items()
        evicted = self.expected.keys() - now.keys()
        assert not evicted & self.locked_prefixes()
        self.expected = now
        # LRU: nothing evicted was used more recently than an unlocked leaf that was kept
        parents = {prefix[:-1] for prefix in now}
        kept_leaves = now.keys() - parents - self.locked_prefixes()
        if evicted and kept_leaves:
            newest_evicted = max(self.last_used[p] for p in evicted)
            assert newest_evicted <= min(self.last_used[p] for p in kept_leaves), "not LRU"

    @precondition(lambda self: not self.running)
    @rule()
    def reset(self) -> None:
        self.cache.reset()
        self.expected.clear()

    @invariant()
    def consistent(self) -> None:
        self.memory.check_integrity(self.running)
        assert contents(self.cache) == self.expected
        locked = self.locked_prefixes()
        assert locked <= self.expected.keys()
        assert self.cache.protected_size == len(locked)
        assert self.cache.total_size == len(self.expected)

    @invariant()
    def every_slot_read_holds_its_tokens_kv(self) -> None:
        """A request reads its whole context where it lies; the page of a cached token holds
        the earlier tokens of that page at the lower offsets (what a partial-page copy reads)."""
        keys = self.pool.k[0][:, 0, 0]
        for req in self.running:
            codes = [kv_code(req.prompt_ids[: i + 1]) for i in range(req.kv_len)]
            assert keys[req.slots].tolist() == codes
        size = self.PAGE_SIZE
        for prefix, slot in self.expected.items():
            first = (len(prefix) - 1) // size * size
            page_codes = [kv_code(prefix[: first + o + 1]) for o in range(len(prefix) - first)]
            page_start = slot // size * size
            assert keys[page_start : slot + 1].tolist() == page_codes


class PagedCacheMachine(CacheMachine):
    """The same with pages of 4 slots: partial pages, copies, pages shared by nodes."""

    PAGE_SIZE = 4


MACHINE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
CacheMachine.TestCase.settings = MACHINE_SETTINGS
PagedCacheMachine.TestCase.settings = MACHINE_SETTINGS
test_cache_against_reference = CacheMachine.TestCase
test_paged_cache_against_reference = PagedCacheMachine.TestCase
