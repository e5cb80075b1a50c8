"""The checks behind `check_integrity()`: each KV page owned exactly once; a tree's shape, sizes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from sgl_lang.runtime.pages import PageAllocator
    from sgl_lang.runtime.prefix_cache import TreeNode

_NO_PAGES = torch.empty(0, dtype=torch.int64)


class IntegrityError(RuntimeError):
    """The cache, the requests and the free list disagree about pages, sizes or locks."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise IntegrityError(what)


def check_ownership(allocator: PageAllocator, owners: dict[str, list[Tensor]]) -> None:
    """Raise IntegrityError unless every usable page of `allocator` is owned exactly once: by one
    of `owners` (a name -> the page tensors it owns) or by the free list."""
    num_pages = allocator.num_pages
    owners = {**owners, "free list": [allocator.free_pages]}
    tagged = [(name, torch.cat(ts) if ts else _NO_PAGES) for name, ts in owners.items()]
    every = torch.cat([pages.to("cpu") for _, pages in tagged])
    if every.numel():
        lo, hi = int(every.min()), int(every.max())
        check(lo >= 1 and hi <= num_pages, f"page out of range [1, {num_pages}]: {lo}..{hi}")
    counts = torch.bincount(every, minlength=num_pages + 1)
    if (twice := (counts > 1).nonzero()).numel():
        page = int(twice[0])
        names = [f"{name} x{int((p == page).sum())}" for name, p in tagged if (p == page).any()]
        raise IntegrityError(f"page {page} is owned more than once: {', '.join(names)}")
    if (leaked := (counts[1:] == 0).nonzero()).numel():
        raise IntegrityError(f"page {int(leaked[0]) + 1} is owned by nobody (leaked)")


def check_tree_shape(root: TreeNode, page_size: int) -> tuple[int, int]:
    """Check links, keys, values, page offsets and lock ordering below `root`; return the
    (evictable, protected) token counts the tree holds."""
    check(root.parent is None and not root.key, "the root must be an empty key")
    check(root.lock_ref >= 1, "the root must stay locked")
    sizes = [0, 0]
    depths = {id(root): 0}  # tokens before the node's key on its path
    for node in root.walk():
        depth = depths[id(node)] + len(node.key)
        depths.update((id(child), depth) for child in node.children.values())
        for first, child in node.children.items():
            check(child.parent is node, f"{child!r} has a wrong parent")
            check(len(child.key) > 0 and child.key[0] == first, f"{child!r} has a bad key")
            check(child.lock_ref >= 0, f"{child!r} has a negative lock_ref")
        num_child_locks = sum(c.lock_ref for c in node.children.values())
        check(node.lock_ref >= num_child_locks, f"{node!r} has fewer locks than its children")
        value = node.value
        check(
            value.dtype == torch.int64 and value.shape == (len(node.key),),
            f"{node!r} has value shape {tuple(value.shape)} for {len(node.key)} tokens",
        )
        positions = torch.arange(depth - len(node.key), depth)
        check(
            bool((value % page_size == positions % page_size).all()),
            f"{node!r} keeps a token at a page offset other than its position's",
        )
        sizes[node.lock_ref > 0] += len(node.key)
    return sizes[0], sizes[1]
