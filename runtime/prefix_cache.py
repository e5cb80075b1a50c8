"""The prefix cache the scheduler talks to: its contract, and the no-op cache for cache-off.

Two implementations: `RadixCache` (radix_cache.py) keeps the KV of every prompt and answer
until memory is needed; `NoOpPrefixCache` (`EngineConfig.enable_cache=False`) keeps nothing,
so every match is empty and a request frees all its slots when it ends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from sgl_lang.runtime.cache_integrity import check_ownership
from sgl_lang.runtime.pages import PageAllocator

EMPTY_SLOTS = torch.empty(0, dtype=torch.int64)


class TreeNode:
    """One edge of a prefix tree: token ids `key` stored at KV slots `value`. The node a match
    ends at is the handle a request locks."""

    __slots__ = ("children", "key", "last_access", "lock_ref", "node_id", "parent", "value")

    def __init__(
        self, key: tuple[int, ...], value: Tensor, parent: TreeNode | None, node_id: int
    ) -> None:
        self.children: dict[int, TreeNode] = {}
        self.parent = parent
        self.key = key
        self.value = value
        self.lock_ref = 0
        self.last_access = 0
        self.node_id = node_id

    @classmethod
    def new_root(cls, node_id: int = 0) -> TreeNode:
        """An empty key, locked once for good: the root is never evicted."""
        root = cls((), EMPTY_SLOTS, None, node_id)
        root.lock_ref = 1
        return root

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def walk(self) -> Iterator[TreeNode]:
        """Every node of this subtree, this one first, parents before children."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def __repr__(self) -> str:
        return (
            f"TreeNode(id={self.node_id}, len={len(self.key)}, lock_ref={self.lock_ref}, "
            f"last_access={self.last_access}, children={len(self.children)})"
        )


class MatchResult(NamedTuple):
    """The slots of the longest cached prefix, and the node that prefix ends at (the root for
    an empty match): lock it for as long as the slots are used."""

    slots: Tensor
    last_node: TreeNode


class PrefixCache(ABC):
    """Computed KV kept for reuse, keyed by token-id prefixes. Only the engine thread calls it.

    Ownership: every usable KV page is owned exactly once: by the cache, by one running request
    (its own pages), or by the allocator's free list. The cache frees pages only in `evict` and
    `reset`; it takes the pages of the slots it keeps from `insert` (whole pages: a page that
    holds a kept slot is the cache's).
    Locks: the slots a match returns stay valid while its `last_node` is locked; the next
    `evict` may free an unlocked prefix. Locks are counted: each `lock` is undone by one `unlock`.
    Sizes: `evictable_size` counts the cached tokens no lock protects, `protected_size` the
    others; together they are `total_size`.
    """

    allocator: PageAllocator

    @abstractmethod
    def match_prefix(self, ids: Sequence[int]) -> MatchResult:
        """The longest cached prefix of `ids`: its slots (a new tensor) and its last node.
        Changes no ownership, size or lock (it may reshape the index and refresh recency)."""

    @abstractmethod
    def insert(self, ids: Sequence[int], slots: Tensor) -> int:
        """Offer the KV `slots` computed for `ids`; returns how many leading tokens were already
        cached (the caller's own slots among those are duplicates: it frees them). The cache
        takes ownership of the slots it keeps beyond those (`match_prefix(ids)` then returns
        them); the caller keeps owning the rest."""

    @abstractmethod
    def lock(self, node: TreeNode) -> None:
        """Protect the prefix ending at `node` from eviction (moves evictable to protected)."""

    @abstractmethod
    def unlock(self, node: TreeNode) -> None:
        """Undo one `lock(node)`."""

    @abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free at least `num_tokens` tokens of unlocked prefixes to the allocator, or all that
        is evictable if that is less; returns the number of tokens freed."""

    @abstractmethod
    def reset(self) -> None:
        """Free every cached slot; raises RuntimeError if anything is locked."""

    @property
    @abstractmethod
    def evictable_size(self) -> int:
        """Cached tokens no lock protects: what `evict` could free."""

    @property
    @abstractmethod
    def protected_size(self) -> int:
        """Cached tokens under a lock."""

    @property
    def total_size(self) -> int:
        return self.evictable_size + self.protected_size

    @abstractmethod
    def check_integrity(
        self,
        request_pages: Iterable[Tensor] = (),
        *,
        locked_nodes: Iterable[TreeNode] | None = None,
    ) -> None:
        """Raise IntegrityError unless ownership, sizes and locks hold.

        `request_pages`: the pages each running request owns (not those it borrows from the
        cache). `locked_nodes`: if given, the node each outstanding lock was taken on (one
        entry per `lock` call); the lock counts must then match them exactly.
        """


class NoOpPrefixCache(PrefixCache):
    """Caching off: nothing is kept, every match is empty and ends at a root that never grows;
    locks protect nothing, so they are not counted."""

    def __init__(self, allocator: PageAllocator) -> None:
        self.allocator = allocator
        self.root = TreeNode.new_root()

    def match_prefix(self, ids: Sequence[int]) -> MatchResult:
        return MatchResult(EMPTY_SLOTS.clone(), self.root)

    def insert(self, ids: Sequence[int], slots: Tensor) -> int:
        return 0

    def lock(self, node: TreeNode) -> None:
        pass

    def unlock(self, node: TreeNode) -> None:
        pass

    def evict(self, num_tokens: int) -> int:
        return 0

    def reset(self) -> None:
        pass

    @property
    def evictable_size(self) -> int:
        return 0

    @property
    def protected_size(self) -> int:
        return 0

    def check_integrity(
        self,
        request_pages: Iterable[Tensor] = (),
        *,
        locked_nodes: Iterable[TreeNode] | None = None,
    ) -> None:
        check_ownership(self.allocator, {"requests": list(request_pages)})
