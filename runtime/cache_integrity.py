"""The checks behind `check_integrity()`: each KV slot owned exactly once; a tree's shape, sizes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from sgl_lang.runtime.kv_pool import SlotAllocator
    from sgl_lang.runtime.prefix_cache import TreeNode

_NO_SLOTS = torch.empty(0, dtype=torch.int64)


class IntegrityError(RuntimeError):
    """The cache, the requests and the free list disagree about slots, sizes or locks."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise IntegrityError(what)


def check_ownership(allocator: SlotAllocator, owners: dict[str, list[Tensor]]) -> None:
    """Raise IntegrityError unless every usable slot of `allocator` is owned exactly once: by one
    of `owners` (a name -> the slot tensors it owns) or by the free list."""
    num_slots = allocator.num_slots
    owners = {**owners, "free list": [allocator.free_slots]}
    tagged = [(name, torch.cat(ts) if ts else _NO_SLOTS) for name, ts in owners.items()]
    every = torch.cat([slots.to("cpu") for _, slots in tagged])
    if every.numel():
        lo, hi = int(every.min()), int(every.max())
        check(lo >= 1 and hi <= num_slots, f"slot out of range [1, {num_slots}]: {lo}..{hi}")
    counts = torch.bincount(every, minlength=num_slots + 1)
    if (twice := (counts > 1).nonzero()).numel():
        slot = int(twice[0])
        names = [f"{name} x{int((s == slot).sum())}" for name, s in tagged if (s == slot).any()]
        raise IntegrityError(f"slot {slot} is owned more than once: {', '.join(names)}")
    if (leaked := (counts[1:] == 0).nonzero()).numel():
        raise IntegrityError(f"slot {int(leaked[0]) + 1} is owned by nobody (leaked)")


def check_tree_shape(root: TreeNode) -> tuple[int, int]:
    """Check links, keys, values and lock ordering below `root`; return the (evictable,
    protected) token counts the tree holds."""
    check(root.parent is None and not root.key, "the root must be an empty key")
    check(root.lock_ref >= 1, "the root must stay locked")
    sizes = [0, 0]
    for node in root.walk():
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
        sizes[node.lock_ref > 0] += len(node.key)
    return sizes[0], sizes[1]
