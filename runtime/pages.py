"""KV pages: the allocator of fixed-size pages of KV slots, and the slot <-> page arithmetic.

With page size P, slot s lies in page s // P at offset s % P. Page 0 is a padding sink that is
never handed out (slots 0..P-1), so a batch may point padding tokens at slot 0 and write there
without touching anyone's cache. Usable pages are 1..num_pages. Page size 1 is one slot a page.

Layout contract (the attention kernels read the pool through it): a request's context token i
lives at slot `pages[i // P] * P + i % P`. Every page of a context but the last is full, so the
block table of a request is `seq_slots[::P] // P` (`slot_pages`).

The free list is a FIFO queue of page ids: `alloc` takes from the front, `free` appends to the
back. A fresh (or cleared) allocator holds 1..num_pages in ascending order, so allocation order
is deterministic and tests can assert exact page numbers. A page is at any moment either in the
free list or owned by someone else (the prefix cache or a request); the allocator checks its own
half of that (no double free, no out-of-range page), `check_integrity` checks the whole.
"""

from __future__ import annotations

import torch
from torch import Tensor


class DoubleFreeError(RuntimeError):
    """A page was freed while it was already free (an ownership bug in the caller)."""


class PageAllocator:
    """Hands out KV pages 1..num_pages of `page_size` slots each from a FIFO free list."""

    def __init__(self, num_pages: int, page_size: int = 1) -> None:
        for name, value in (("num_pages", num_pages), ("page_size", page_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.clear()

    def clear(self) -> None:
        """Make every usable page free again, in ascending order."""
        self._free_pages = torch.arange(1, self.num_pages + 1, dtype=torch.int64)
        self._is_free = torch.ones(self.num_pages + 1, dtype=torch.bool)
        self._is_free[0] = False  # the sink is never free, so freeing it is caught too

    @property
    def num_slots(self) -> int:
        """Usable slots: every page but the sink."""
        return self.num_pages * self.page_size

    @property
    def num_free_pages(self) -> int:
        return int(self._free_pages.numel())

    @property
    def num_used_pages(self) -> int:
        return self.num_pages - self.num_free_pages

    @property
    def num_free_slots(self) -> int:
        return self.num_free_pages * self.page_size

    @property
    def free_pages(self) -> Tensor:
        """The free list in allocation order (a read-only view; do not modify)."""
        return self._free_pages

    def alloc(self, num_pages: int) -> Tensor | None:
        """Take `num_pages` pages from the front of the free list; None if fewer are free."""
        if num_pages < 0:
            raise ValueError(f"num_pages must be >= 0, got {num_pages}")
        if num_pages > self.num_free_pages:
            return None
        pages = self._free_pages[:num_pages].clone()
        self._free_pages = self._free_pages[num_pages:]
        self._is_free[pages] = False
        return pages

    def free(self, pages: Tensor) -> None:
        """Return `pages` to the back of the free list, in the given order.

        Raises ValueError for a malformed tensor or a page outside 1..num_pages, and
        DoubleFreeError if a page is already free or appears twice; nothing is freed then.
        """
        if pages.dtype != torch.int64 or pages.dim() != 1:
            raise ValueError(f"pages must be a 1-D int64 tensor, got {pages.dtype} {pages.dim()}-D")
        if pages.numel() == 0:
            return
        pages = pages.to("cpu")
        lo, hi = int(pages.min()), int(pages.max())
        if lo < 1 or hi > self.num_pages:
            raise ValueError(f"pages must lie in [1, {self.num_pages}], got [{lo}, {hi}]")
        already_free = pages[self._is_free[pages]]
        if already_free.numel():
            raise DoubleFreeError(f"page {int(already_free[0])} is already free")
        if torch.unique(pages).numel() != pages.numel():
            raise DoubleFreeError("pages to free contain duplicates")
        self._is_free[pages] = True
        self._free_pages = torch.cat((self._free_pages, pages))


def num_pages_for(num_tokens: int, page_size: int) -> int:
    """Pages that hold `num_tokens` tokens laid out from offset 0."""
    return -(-num_tokens // page_size)


def page_slots(pages: Tensor, page_size: int, num_tokens: int | None = None) -> Tensor:
    """The first `num_tokens` slots (default: all) of `pages`, in order."""
    offsets = torch.arange(page_size, dtype=torch.int64)
    slots = (pages[:, None] * page_size + offsets).flatten()
    return slots if num_tokens is None else slots[:num_tokens]


def slot_pages(slots: Tensor, page_size: int) -> Tensor:
    """The page of each group of `page_size` tokens of a context laid out by the contract (its
    block table)."""
    return slots[::page_size] // page_size


def distinct_pages(slots: Tensor, page_size: int) -> Tensor:
    """The pages `slots` touch, each once (a page's slots are adjacent in a tree node's value)."""
    return torch.unique_consecutive(slots // page_size)
