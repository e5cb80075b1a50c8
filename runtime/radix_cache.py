"""The prefix index: a radix tree over token ids whose values are KV slots (a PrefixCache).

Each edge (a `TreeNode`) holds `key`, a run of token ids, and `value`, the slots holding their
K/V (same length). The path from the root to a node spells a token prefix; its concatenated
values are the slots of that prefix, so a request whose prompt starts with it reuses them.
Children are keyed by the first token of their key, so no two children share a first token.

Invariants (on top of the PrefixCache contract; checked by `check_integrity`, which the tests
call after every operation):

* Ownership: `insert` takes ownership of the slots it adds, copied into a new leaf.
* Locks: `lock(node)` adds 1 to `lock_ref` of the node and of every ancestor; `unlock` undoes
  it. So a node's `lock_ref` is at least the sum of its children's, the root's is at least 1
  (the root is always locked), and a locked node is never evicted. A request locks the node
  its matched prefix ends at for as long as it reads those slots.
* Sizes: `evictable_size` counts the tokens of nodes with `lock_ref == 0`, `protected_size`
  those with `lock_ref > 0`.
* Recency: every node a `match_prefix` or `insert` walks through gets the next value of a
  monotonic counter as `last_access`. `evict` frees unlocked leaves least recently used first
  (ties broken by creation order); a parent left as an unlocked leaf becomes a candidate.

A match or insert that ends inside a node's key splits the node in two, so every match ends on
a node boundary and can be locked. Splitting keeps ownership, sizes and lock counts unchanged.

Pages (pages.py): the tree owns whole pages. A token at depth i of a path sits at page offset
i % page_size, and the page holding it also holds the path's earlier tokens of that page at the
lower offsets (a request fills a page from offset 0 and hands it over whole), so the page of a
page's last matched token serves the whole page. A node that ends mid-page may share its last
page with its children; `_page_refs` counts the nodes holding each page, and `evict` frees a
page when no node holds it any more.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from sgl_lang.runtime.cache_integrity import check, check_ownership, check_tree_shape
from sgl_lang.runtime.pages import PageAllocator, distinct_pages
from sgl_lang.runtime.prefix_cache import EMPTY_SLOTS, MatchResult, PrefixCache, TreeNode


class RadixCache(PrefixCache):
    """The radix tree of cached prefixes; frees evicted pages to `allocator`."""

    def __init__(self, allocator: PageAllocator) -> None:
        self.allocator = allocator
        self.page_size = allocator.page_size
        self._node_ids = itertools.count()
        self._new_tree()

    def _new_tree(self) -> None:
        self.root = TreeNode.new_root(next(self._node_ids))
        self._clock = 0
        self._evictable_size = 0
        self._protected_size = 0
        self._page_refs = torch.zeros(self.allocator.num_pages + 1, dtype=torch.int32)

    # -- sizes -------------------------------------------------------------------------------

    @property
    def evictable_size(self) -> int:
        """Tokens in unlocked nodes: what `evict` could free."""
        return self._evictable_size

    @property
    def protected_size(self) -> int:
        """Tokens in locked nodes."""
        return self._protected_size

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
        slots = torch.cat(values) if values else EMPTY_SLOTS.clone()
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
                self._page_refs[distinct_pages(leaf.value, self.page_size)] += 1
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
        boundary_page = int(node.value[num_upper]) // self.page_size
        if int(node.value[num_upper - 1]) // self.page_size == boundary_page:
            self._page_refs[boundary_page] += 1  # both halves hold the page cut through
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
            (n.last_access, n.node_id, n) for n in self.root.walk() if n.is_leaf and not n.lock_ref
        ]
        heapq.heapify(heap)
        num_freed = 0
        while num_freed < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            self._free_pages_of(leaf)
            del parent.children[leaf.key[0]]
            leaf.parent = None
            self._evictable_size -= len(leaf.key)
            num_freed += len(leaf.key)
            if parent is not self.root and parent.is_leaf and not parent.lock_ref:
                heapq.heappush(heap, (parent.last_access, parent.node_id, parent))
        return num_freed

    def _free_pages_of(self, leaf: TreeNode) -> None:
        """Drop `leaf`'s hold on its pages; free those no other node holds."""
        pages = distinct_pages(leaf.value, self.page_size)
        self._page_refs[pages] -= 1
        self.allocator.free(pages[self._page_refs[pages] == 0])

    def reset(self) -> None:
        """Free every page of the tree and empty it; raises RuntimeError if anything is locked."""
        if self.root.lock_ref != 1:
            raise RuntimeError("reset() while nodes are locked")
        self.allocator.free(self._page_refs.nonzero().flatten())
        self._new_tree()

    # -- checking ---------------------------------------------------------------------------

    def check_integrity(
        self,
        request_pages: Iterable[Tensor] = (),
        *,
        locked_nodes: Iterable[TreeNode] | None = None,
    ) -> None:
        """Raise IntegrityError unless the invariants in the module docstring hold (see
        PrefixCache.check_integrity): every `lock_ref` then equals the locks at or below it."""
        sizes = check_tree_shape(self.root, self.page_size)
        recorded = (self._evictable_size, self._protected_size)
        check(sizes == recorded, f"(evictable, protected) sizes are {recorded}, tree has {sizes}")
        if locked_nodes is not None:
            expected: dict[int, int] = {id(self.root): 1}
            for node in locked_nodes:
                for n in self._path_to_root(node):
                    expected[id(n)] = expected.get(id(n), 0) + 1
            for n in self.root.walk():
                check(n.lock_ref == expected.get(id(n), 0), f"lock_ref of {n!r} mismatches locks")
        page_refs = torch.zeros_like(self._page_refs)
        for n in self.root.walk():
            page_refs[distinct_pages(n.value, self.page_size)] += 1
        check(torch.equal(page_refs, self._page_refs), "page reference counts mismatch the tree")
        tree_pages = page_refs.nonzero().flatten()
        check_ownership(self.allocator, {"tree": [tree_pages], "requests": list(request_pages)})


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
