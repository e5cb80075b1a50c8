"""A request's KV slots: borrowing a cached prefix, allocating (evicting when short), caching
what was computed, and giving everything back. The scheduler's only door to the memory."""

from __future__ import annotations

import torch
from torch import Tensor

from sgl_lang.runtime.kv_pool import SlotAllocator
from sgl_lang.runtime.prefix_cache import MatchResult, PrefixCache
from sgl_lang.runtime.request import Request


class CacheManager:
    """The free list and the prefix cache, seen from the requests that hold slots."""

    def __init__(self, allocator: SlotAllocator, prefix_cache: PrefixCache) -> None:
        self.allocator = allocator
        self.prefix_cache = prefix_cache

    @property
    def num_allocatable(self) -> int:
        """Slots an allocation could get now: free, or freed by evicting."""
        return self.allocator.num_free + self.prefix_cache.evictable_size

    def match(self, req: Request) -> MatchResult:
        """The cached prefix `req` may reuse (see `Request.max_match_len`)."""
        return self.prefix_cache.match_prefix(req.fill_ids[: req.max_match_len])

    def borrow(self, req: Request, match: MatchResult) -> None:
        """Start `req` on its matched prefix; `match.last_node` must be locked already."""
        req.slots, req.tree_len, req.last_node = match.slots, len(match.slots), match.last_node

    def make_room(self, num: int) -> bool:
        """Evict until `num` slots are free; False if they cannot be."""
        if self.allocator.num_free < num:
            self.prefix_cache.evict(num - self.allocator.num_free)
        return self.allocator.num_free >= num

    def alloc(self, num: int) -> Tensor | None:
        return self.allocator.alloc(num) if self.make_room(num) else None

    def cache_computed(self, req: Request) -> None:
        """Offer `req`'s computed tokens to the prefix cache and borrow back, locked, what it
        keeps; the rest of its slots stay its own."""
        cache = self.prefix_cache
        ids = req.fill_ids[: req.kv_len]
        num_cached = cache.insert(ids, req.slots)
        if num_cached > req.tree_len:  # another request cached these meanwhile: ours are dups
            self.allocator.free(req.slots[req.tree_len : num_cached])
        match = cache.match_prefix(ids)
        cache.lock(match.last_node)
        if req.last_node is not None:
            cache.unlock(req.last_node)
        num_kept = len(match.slots)
        req.slots = torch.cat((match.slots, req.slots[num_kept:]))
        req.tree_len, req.last_node = num_kept, match.last_node

    def release(self, req: Request) -> None:
        """Hand back all of `req`'s slots: to the prefix cache what it keeps (unlocked), the
        rest to the free list."""
        if req.kv_len > req.tree_len:
            self.cache_computed(req)
        self.allocator.free(req.own_slots)
        if req.last_node is not None:
            self.prefix_cache.unlock(req.last_node)
        req.slots, req.tree_len, req.last_node = req.slots[:0], 0, None

    def discard(self, req: Request) -> None:
        """Free `req`'s own slots without caching them (their KV is not trusted); it keeps its
        cached prefix, still locked."""
        self.allocator.free(req.own_slots)
        req.slots = req.slots[: req.tree_len]

    def check_integrity(self, active: list[Request]) -> None:
        """Raise IntegrityError if a slot is leaked or owned twice, or a lock count is off."""
        self.prefix_cache.check_integrity(
            [r.own_slots for r in active],
            locked_nodes=[r.last_node for r in active if r.last_node is not None],
        )
