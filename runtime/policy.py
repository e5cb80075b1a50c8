"""Admission order: which waiting requests the scheduler tries first.

Policies: `lpm` (longest cached prefix first), `dfs-weight` (a DFS over the trie of the waiting
prompts, heavier subtrees first: requests sharing a prefix run back to back, the SGLang paper's
order), `fcfs`. Aging puts a request that waited more than `aging_steps` steps first, so a
cache-aware policy never starves it. Matching costs a tree walk per request, so only the first
`max_queue_match` requests of a long queue are matched and ordered; the rest follow in arrival
order. In-batch prefix sharing defers a request whose uncached prefix another admitted request
is computing right now: one step later it is a cache hit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from sgl_lang.runtime.config import EngineConfig
    from sgl_lang.runtime.prefix_cache import MatchResult
    from sgl_lang.runtime.request import Request

Match = Callable[["Request"], "MatchResult"]


class Candidate(NamedTuple):
    """A waiting request in admission order, with its cached prefix if it was matched."""

    request: Request
    match: MatchResult | None  # None: not matched yet (fcfs, or beyond `max_queue_match`)


def admission_order(
    waiting: list[Request], num_steps: int, config: EngineConfig, match: Match
) -> list[Candidate]:
    """Aged requests first (in queue order); then the first `max_queue_match` others in policy
    order; then the rest in queue order (unmatched)."""
    aged: list[Request] = []
    fresh: list[Request] = []
    for req in waiting:
        too_old = (
            config.aging_steps is not None and num_steps - req.enqueue_step > config.aging_steps
        )
        (aged if too_old else fresh).append(req)
    head, tail = fresh[: config.max_queue_match], fresh[config.max_queue_match :]
    matches: dict[int, MatchResult] = {}
    if config.policy != "fcfs":
        matches = {id(r): match(r) for r in head}
    if config.policy == "lpm":
        head.sort(key=lambda r: -len(matches[id(r)].slots))  # stable: ties keep order
    elif config.policy == "dfs-weight":
        head = dfs_weight_order(head, lambda r: len(matches[id(r)].slots))
    return [Candidate(r, matches.get(id(r))) for r in aged + head + tail]


def shares_uncached_prefix(
    req: Request, others: list[Request], num_cached: int, min_tokens: int
) -> bool:
    """Whether `req` shares at least `min_tokens` tokens beyond its `num_cached` cached ones
    with one of `others` (requests being extended this step)."""
    end = num_cached + min_tokens
    if req.fill_len < end:
        return False
    head = req.fill_ids[:end]
    return any(o.fill_len >= end and o.fill_ids[:end] == head for o in others)


def dfs_weight_order(
    reqs: list[Request], cached_len: Callable[[Request], int] = lambda r: 0
) -> list[Request]:
    """Order requests by a DFS over the trie of their token ids, heavier subtrees (more
    requests) first, so requests sharing a prefix run back to back (the paper's batch order).
    Equal weights: the subtree with the longest cached prefix first, then the earliest."""
    return _dfs(reqs, 0, cached_len)


def _dfs(reqs: list[Request], depth: int, cached_len: Callable[[Request], int]) -> list[Request]:
    if len(reqs) <= 1:
        return reqs
    ids = [r.fill_ids for r in reqs]
    shortest = min(len(x) for x in ids)
    while depth < shortest and all(x[depth] == ids[0][depth] for x in ids):
        depth += 1  # skip the common prefix without recursing
    ended = [r for r, x in zip(reqs, ids, strict=True) if len(x) == depth]
    groups: dict[int, list[Request]] = {}
    for r, x in zip(reqs, ids, strict=True):
        if len(x) > depth:
            groups.setdefault(x[depth], []).append(r)
    ordered = sorted(
        groups.values(),
        key=lambda g: (-len(g), -max(cached_len(r) for r in g), min(r.arrival for r in g)),
    )
    return ended + [r for g in ordered for r in _dfs(g, depth + 1, cached_len)]
