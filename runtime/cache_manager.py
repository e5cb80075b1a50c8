"""A request's KV pages: borrowing a cached prefix, allocating (evicting when short), caching
what was computed, and giving everything back. The scheduler's only door to the memory.

A request's slots follow the page layout (pages.py). Its first `ceil(tree_len / page_size)`
pages are the prefix cache's (borrowed, locked through `last_node`), the rest its own. A cached
prefix that ends mid-page is not borrowed in place (the rest of that page may hold another
branch): its tokens' K/V are copied into a fresh page of the request's own. The one cache page a
request writes into is the partial last page it handed over itself (nobody else writes there).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.pages import num_pages_for, page_slots, slot_pages
from sgl_lang.runtime.prefix_cache import MatchResult, PrefixCache
from sgl_lang.runtime.request import Request


class CacheManager:
    """The free pages and the prefix cache, seen from the requests that hold slots."""

    def __init__(self, kv_pool: KVPool, prefix_cache: PrefixCache) -> None:
        self.kv_pool = kv_pool
        self.allocator = kv_pool.allocator
        self.page_size = self.allocator.page_size
        self.prefix_cache = prefix_cache

    @property
    def num_allocatable(self) -> int:
        """Slots an allocation could get now: free, or freed by evicting (fewer when an
        evicted node shares a page with a node that stays)."""
        return self.allocator.num_free_slots + self.prefix_cache.evictable_size

    def match(self, req: Request) -> MatchResult:
        """The cached prefix `req` may reuse (see `Request.max_match_len`)."""
        return self.prefix_cache.match_prefix(req.fill_ids[: req.max_match_len])

    def borrow(self, req: Request, match: MatchResult) -> bool:
        """Start `req` on its matched prefix (`match.last_node` must be locked already): it
        borrows the whole cached pages and gets a copy of a partial last page. False, changing
        nothing, if no page is free for that copy."""
        size = self.page_size
        num_matched = len(match.slots)
        num_whole = num_matched - num_matched % size
        slots = page_slots(match.slots[size - 1 : num_whole : size] // size, size)
        if num_whole < num_matched:
            page = self.alloc_pages(1)
            if page is None:
                return False
            num_copied = num_matched - num_whole
            source_page = int(match.slots[-1]) // size
            copied = page_slots(page, size, num_copied)
            self.kv_pool.copy_slots(source_page * size + torch.arange(num_copied), copied)
            slots = torch.cat((slots, copied))
        req.slots, req.tree_len, req.last_node = slots, num_whole, match.last_node
        return True

    def make_room(self, num_pages: int) -> bool:
        """Evict until `num_pages` pages are free; False if they cannot be."""
        while self.allocator.num_free_pages < num_pages:
            num_short = num_pages - self.allocator.num_free_pages
            if not self.prefix_cache.evict(num_short * self.page_size):
                return False
        return True

    def alloc_pages(self, num_pages: int) -> Tensor | None:
        return self.allocator.alloc(num_pages) if self.make_room(num_pages) else None

    def num_pages_to_grow(self, req: Request, num_tokens: int) -> int:
        """New pages `req` needs for `num_tokens` more tokens."""
        return num_pages_for(req.kv_len + num_tokens, self.page_size) - num_pages_for(
            req.kv_len, self.page_size
        )

    def num_growable(self, req: Request) -> int:
        """Tokens `req` could grow by now: the rest of its last page, then allocatable slots."""
        return -req.kv_len % self.page_size + self.num_allocatable

    def grow(self, req: Request, num_tokens: int) -> Tensor | None:
        """Append slots for `num_tokens` more tokens to `req` (the rest of its last page, then
        new pages); the new slots, or None (nothing changed) if the pages cannot be had."""
        size = self.page_size
        pages = self.alloc_pages(self.num_pages_to_grow(req, num_tokens))
        if pages is None:
            return None
        num_spare = -req.kv_len % size
        spare = req.slots[-1:] + torch.arange(1, num_spare + 1) if num_spare else req.slots[:0]
        new_slots = torch.cat((spare, page_slots(pages, size)))[:num_tokens]
        req.slots = torch.cat((req.slots, new_slots))
        return new_slots

    def cache_computed(self, req: Request) -> None:
        """Offer `req`'s computed tokens to the prefix cache and borrow back, locked, what it
        keeps: its whole pages, and its partial last page if the cache took that one; its own
        pages the cache had copies of already are freed."""
        cache, size = self.prefix_cache, self.page_size
        ids = req.fill_ids[: req.kv_len]
        req_pages = slot_pages(req.slots, size)
        num_tree_pages = num_pages_for(req.tree_len, size)
        num_cached = cache.insert(ids, req.slots)
        match = cache.match_prefix(ids)
        cache.lock(match.last_node)
        if req.last_node is not None:
            cache.unlock(req.last_node)
        num_kept = len(match.slots)
        num_whole_pages = num_kept // size
        tree_pages = match.slots[size - 1 : num_whole_pages * size : size] // size
        own_pages = req_pages[num_tree_pages:num_whole_pages]
        self.allocator.free(own_pages[own_pages != tree_pages[num_tree_pages:]])
        tree_len = num_kept
        took_last_page = num_whole_pages < num_tree_pages or num_cached < num_kept
        if num_kept % size and not took_last_page:
            tree_len = num_whole_pages * size  # the cache has that page's tokens elsewhere
        pages = torch.cat((tree_pages, req_pages[num_whole_pages:]))
        req.slots = page_slots(pages, size, req.kv_len)
        req.tree_len, req.last_node = tree_len, match.last_node

    def own_pages(self, req: Request) -> Tensor:
        """The pages `req` owns (the cache owns the others)."""
        return slot_pages(req.slots, self.page_size)[num_pages_for(req.tree_len, self.page_size) :]

    def release(self, req: Request) -> None:
        """Hand back all of `req`'s pages: to the prefix cache what it keeps (unlocked), the
        rest to the free list."""
        if req.kv_len > req.tree_len:
            self.cache_computed(req)
        self.allocator.free(self.own_pages(req))
        if req.last_node is not None:
            self.prefix_cache.unlock(req.last_node)
        req.slots, req.tree_len, req.last_node = req.slots[:0], 0, None

    def discard(self, req: Request) -> None:
        """Free `req`'s own pages without caching them (their KV is not trusted); it keeps its
        cached prefix, still locked."""
        self.allocator.free(self.own_pages(req))
        req.slots = req.slots[: req.tree_len]

    def check_integrity(self, active: list[Request]) -> None:
        """Raise IntegrityError if a page is leaked or owned twice, or a lock count is off."""
        self.prefix_cache.check_integrity(
            [self.own_pages(r) for r in active],
            locked_nodes=[r.last_node for r in active if r.last_node is not None],
        )
