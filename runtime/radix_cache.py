"""The prefix index: a radix tree over token ids whose values are KV slots.

Each edge (a `TreeNode`) holds `key`, a run of token ids, and `value`, the slots holding their
K/V (same length). The path from the root to a node spells a token prefix; its concatenated
values are the slots of that prefix, so a request whose prompt starts with it reuses them.
Children are keyed by the first token of their key, so no two children share a first token.

Invariants (checked by `check_integrity`, which the tests call after every operation):

* Ownership: every usable slot is owned exactly once: by one tree node, by one running
  request (its own, not yet inserted slots), or by the allocator's free list.
  The tree frees slots only in `evict` and `reset`; `insert` takes ownership of the slots it
  adds, and the caller frees its duplicates of the part that was already cached.
* Locks: `lock(node)` adds 1 to `lock_ref` of the node and of every ancestor; `unlock` undoes
  it. So a node's `lock_ref` is at least the sum of its children's, the root's is at least 1
  (the root is always locked), and a locked node is never evicted. A request locks the node
  its matched prefix ends at for as long as it reads those slots.
* Sizes: `evictable_size` counts the tokens of nodes with `lock_ref == 0`, `protected_size`
  those with `lock_ref > 0`; together they are every token in the tree.
* Recency: every node a `match_prefix` or `insert` walks through gets the next value of a
  monotonic counter as `last_access`. `evict` frees unlocked leaves least recently used first
  (ties broken by creation order); a parent left as an unlocked leaf becomes a candidate.

A match or insert that ends inside a node's key splits the node in two, so every match ends on
a node boundary and can be locked. Splitting keeps ownership, sizes and lock counts unchanged.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from sgl_lang.runtime.kv_pool import SlotAllocator

_EMPTY_SLOTS = torch.empty(0, dtype=torch.int64)


class IntegrityError(RuntimeError):
    """The tree, the requests and the free list disagree about slots, sizes or locks."""


class TreeNode:
    """One edge of the radix tree: token ids `key` stored at KV slots `value`."""

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

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def __repr__(self) -> str:
        return (
            f"TreeNode(id={self.node_id}, len={len(self.key)}, lock_ref={self.lock_ref}, "
            f"last_access={self.last_access}, children={len(self.children)})"
        )


class MatchResult(NamedTuple):
    """The cached slots of the longest cached prefix, and the node that prefix ends at."""

    slots: Tensor
    last_node: TreeNode


class RadixCache:
    """The radix tree of cached prefixes; frees evicted slots to `allocator`."""

    def __init__(self, allocator: SlotAllocator) -> None:
        self.allocator = allocator
        self._node_ids = itertools.count()
        self._new_tree()

    def _new_tree(self) -> None:
        self.root = TreeNode((), _EMPTY_SLOTS, None, next(self._node_ids))
        self.root.lock_ref = 1
        self._clock = 0
        self._evictable_size = 0
        self._protected_size = 0

    # -- sizes -------------------------------------------------------------------------------

    @property
    def evictable_size(self) -> int:
        """Tokens in unlocked nodes: what `evict` could free."""
        return self._evictable_size

    @property
    def protected_size(self) -> int:
        """Tokens in locked nodes."""
        return self._protected_size

    @property
    def total_size(self) -> int:
        return self._evictable_size + self._protected_size

    # -- lookup and insertion ---------------------------------------------------------------

    def match_prefix(self, ids: Sequence[int]) -> MatchResult:
        """The longest cached prefix of `ids`: its slots (a new tensor) and its last node.

        Splits the node where the match ends mid-key; touches `last_access` along the path.
        Does not change ownership, sizes or locks.
        """
        key = _as_key(ids)
        self._clock += 1
        node, pos, values = self.root, 0, []
        while pos < len(key) and (child := node.children.get(key[pos])) is not None:
            num_matched = _match_len(child.key, key, pos)
            if num_matched < len(child.key):
                child = self._split(child, num_matched)
            child.last_access = self._clock
            values.append(child.value)
            node, pos = child, pos + num_matched
        slots = torch.cat(values) if values else _EMPTY_SLOTS.clone()
        return MatchResult(slots, node)

    def insert(self, ids: Sequence[int], slots: Tensor) -> int:
        """Cache `ids` at `slots`; returns how many leading tokens were already cached.

        The tree takes ownership of `slots[returned:]` (copied into a new leaf). The tree keeps
        its own slots for the first `returned` tokens: the caller's copies there that it owns
        are duplicates it must free.
        """
        key = _as_key(ids)
        if slots.dtype != torch.int64 or slots.shape != (len(key),):
            raise ValueError(f"slots must be a 1-D int64 tensor of length {len(key)} (len(ids))")
        self._clock += 1
        node, pos = self.root, 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                leaf = TreeNode(key[pos:], slots[pos:].clone(), node, next(self._node_ids))
                leaf.last_access = self._clock
                node.children[key[pos]] = leaf
                self._evictable_size += len(leaf.key)
                break
            num_matched = _match_len(child.key, key, pos)
            if num_matched < len(child.key):
                child = self._split(child, num_matched)
            child.last_access = self._clock
            node, pos = child, pos + num_matched
        return pos

    def _split(self, node: TreeNode, num_upper: int) -> TreeNode:
        """Cut `node` after `num_upper` tokens; returns the new upper half (`node` stays the
        lower half, so references held to it stay valid)."""
        parent = node.parent
        assert parent is not None and 0 < num_upper < len(node.key)
        upper = TreeNode(node.key[:num_upper], node.value[:num_upper], parent, next(self._node_ids))
        upper.lock_ref, upper.last_access = node.lock_ref, node.last_access
        upper.children[node.key[num_upper]] = node
        parent.children[upper.key[0]] = upper
        node.key, node.value, node.parent = node.key[num_upper:], node.value[num_upper:], upper
        return upper

    # -- locking ----------------------------------------------------------------------------

    def lock(self, node: TreeNode) -> None:
        """Protect `node` and its ancestors from eviction (nested locks are counted)."""
        path = self._path_to_root(node)
        for n in path:
            if n.lock_ref == 0:
                self._evictable_size -= len(n.key)
                self._protected_size += len(n.key)
            n.lock_ref += 1

    def unlock(self, node: TreeNode) -> None:
        """Undo one `lock(node)`; raises ValueError (changing nothing) if it was not locked."""
        path = self._path_to_root(node)
        if any(n.lock_ref < (2 if n is self.root else 1) for n in path):
            raise ValueError(f"unlock of a node that is not locked: {node!r}")
        for n in path:
            n.lock_ref -= 1
            if n.lock_ref == 0:
                self._protected_size -= len(n.key)
                self._evictable_size += len(n.key)

    def _path_to_root(self, node: TreeNode) -> list[TreeNode]:
        path = [node]
        while (parent := path[-1].parent) is not None:
            if parent.children.get(path[-1].key[0]) is not path[-1]:
                raise ValueError(f"node is no longer in the tree: {node!r}")
            path.append(parent)
        if path[-1] is not self.root:
            raise ValueError(f"node is no longer in the tree: {node!r}")
        return path

    # -- freeing ----------------------------------------------------------------------------

    def evict(self, num_tokens: int) -> int:
        """Free at least `num_tokens` tokens of unlocked leaves, least recently used first, or
        all that is evictable if that is less; returns the number of tokens freed."""
        heap = [
            (n.last_access, n.node_id, n) for n in self._nodes() if n.is_leaf and not n.lock_ref
        ]
        heapq.heapify(heap)
        num_freed = 0
        while num_freed < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            self.allocator.free(leaf.value)
            del parent.children[leaf.key[0]]
            leaf.parent = None
            self._evictable_size -= len(leaf.key)
            num_freed += len(leaf.key)
            if parent is not self.root and parent.is_leaf and not parent.lock_ref:
                heapq.heappush(heap, (parent.last_access, parent.node_id, parent))
        return num_freed

    def reset(self) -> None:
        """Free every slot of the tree and empty it; raises RuntimeError if anything is locked."""
        if self.root.lock_ref != 1:
            raise RuntimeError("reset() while nodes are locked")
        values = [n.value for n in self._nodes() if n is not self.root]
        if values:
            self.allocator.free(torch.cat(values))
        self._new_tree()

    def _nodes(self) -> Iterable[TreeNode]:
        """Every node, the root first, parents before children."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    # -- checking ---------------------------------------------------------------------------

    def check_integrity(
        self,
        request_slots: Iterable[Tensor] = (),
        *,
        locked_nodes: Iterable[TreeNode] | None = None,
    ) -> None:
        """Raise IntegrityError unless the invariants in the module docstring hold.

        `request_slots`: the slots each running request owns (not those it borrows from the
        tree). `locked_nodes`: if given, the node each outstanding lock was taken on (one
        entry per `lock` call); every `lock_ref` must then equal the locks at or below it.
        """
        sizes = self._tree_structure()
        recorded = (self._evictable_size, self._protected_size)
        _check(sizes == recorded, f"(evictable, protected) sizes are {recorded}, tree has {sizes}")
        if locked_nodes is not None:
            expected: dict[int, int] = {id(self.root): 1}
            for node in locked_nodes:
                for n in self._path_to_root(node):
                    expected[id(n)] = expected.get(id(n), 0) + 1
            for n in self._nodes():
                _check(n.lock_ref == expected.get(id(n), 0), f"lock_ref of {n!r} mismatches locks")
        owners = {"tree": [n.value for n in self._nodes()]}
        owners["requests"] = list(request_slots)
        owners["free list"] = [self.allocator.free_slots]
        self._check_ownership(owners)

    def _tree_structure(self) -> tuple[int, int]:
        """Check links, keys and lock ordering; return (evictable, protected) token counts."""
        _check(self.root.parent is None and not self.root.key, "the root must be an empty key")
        _check(self.root.lock_ref >= 1, "the root must stay locked")
        sizes = [0, 0]
        for node in self._nodes():
            for first, child in node.children.items():
                _check(child.parent is node, f"{child!r} has a wrong parent")
                _check(len(child.key) > 0 and child.key[0] == first, f"{child!r} has a bad key")
                _check(child.lock_ref >= 0, f"{child!r} has a negative lock_ref")
            num_child_locks = sum(c.lock_ref for c in node.children.values())
            _check(node.lock_ref >= num_child_locks, f"{node!r} has fewer locks than its children")
            value = node.value
            _check(
                value.dtype == torch.int64 and value.shape == (len(node.key),),
                f"{node!r} has value shape {tuple(value.shape)} for {len(node.key)} tokens",
            )
            sizes[node.lock_ref > 0] += len(node.key)
        return sizes[0], sizes[1]

    def _check_ownership(self, owners: dict[str, list[Tensor]]) -> None:
        num_slots = self.allocator.num_slots
        tagged = [(name, torch.cat(ts) if ts else _EMPTY_SLOTS) for name, ts in owners.items()]
        every = torch.cat([slots.to("cpu") for _, slots in tagged])
        if every.numel():
            lo, hi = int(every.min()), int(every.max())
            _check(lo >= 1 and hi <= num_slots, f"slot out of range [1, {num_slots}]: {lo}..{hi}")
        counts = torch.bincount(every, minlength=num_slots + 1)
        if (twice := (counts > 1).nonzero()).numel():
            slot = int(twice[0])
            names = [f"{name} x{int((s == slot).sum())}" for name, s in tagged if (s == slot).any()]
            raise IntegrityError(f"slot {slot} is owned more than once: {', '.join(names)}")
        if (leaked := (counts[1:] == 0).nonzero()).numel():
            raise IntegrityError(f"slot {int(leaked[0]) + 1} is owned by nobody (leaked)")


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise IntegrityError(what)


def _as_key(ids: Sequence[int]) -> tuple[int, ...]:
    if isinstance(ids, Tensor):
        return tuple(ids.tolist())
    return tuple(ids)


def _match_len(key: tuple[int, ...], ids: tuple[int, ...], start: int) -> int:
    """How many leading tokens of `key` equal `ids[start:]`."""
    num = min(len(key), len(ids) - start)
    if key[:num] == ids[start : start + num]:  # the common case, compared in C
        return num
    for i in range(num):
        if key[i] != ids[start + i]:
            return i
    return num
