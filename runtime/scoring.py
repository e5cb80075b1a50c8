"""Scoring `select` choices from prompt-token log-probabilities, by the three methods of the
language: `normalized`, `greedy` and `unconditional` (as in SGLang's `choices_method`s)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

SCORE_METHODS = ("normalized", "greedy", "unconditional")
GREEDY_TIE_DECIMALS = 4


class ChoiceScore(NamedTuple):
    """One choice of a `select`: its tokens, their log-probs after the prefix (and after only a
    neutral prefix, for `unconditional`), and `score`: the higher, the better (the first
    choice with the highest score is the one to pick)."""

    text: str
    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]
    score: float
    unconditional_logprobs: tuple[float, ...] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def logprob_sum(self) -> float:
        return sum(self.token_logprobs)

    @property
    def logprob_mean(self) -> float:
        return self.logprob_sum / self.num_tokens


def check_method(method: str) -> None:
    if method not in SCORE_METHODS:
        raise ValueError(f"score method: expected one of {SCORE_METHODS}, got {method!r}")


def choice_scores(
    method: str,
    texts: Sequence[str],
    token_ids: Sequence[Sequence[int]],
    logprobs: Sequence[Sequence[float]],
    unconditional: Sequence[Sequence[float]] | None = None,
) -> list[ChoiceScore]:
    """Score every choice by `method`:

    * `normalized`: the mean log-prob of the choice's tokens (token-length normalised);
    * `greedy`: compare choices token by token, keeping those with the best log-prob at each
      position (a shorter choice is padded with its mean); score = minus the choice's rank;
    * `unconditional`: the mean of (log-prob after the prefix - log-prob after a neutral
      prefix), which discounts choices that are likely whatever the question.
    """
    check_method(method)
    if method == "normalized":
        scores = [sum(lps) / len(lps) for lps in logprobs]
    elif method == "greedy":
        scores = greedy_ranks(logprobs)
    else:
        if unconditional is None:
            raise ValueError("the unconditional method needs unconditional log-probs")
        scores = [
            sum(c - u for c, u in zip(lps, ulps, strict=True)) / len(lps)
            for lps, ulps in zip(logprobs, unconditional, strict=True)
        ]
    return [
        ChoiceScore(
            text,
            tuple(ids),
            tuple(lps),
            float(score),
            tuple(unconditional[i]) if unconditional is not None else None,
        )
        for i, (text, ids, lps, score) in enumerate(
            zip(texts, token_ids, logprobs, scores, strict=True)
        )
    ]


def greedy_ranks(logprobs: Sequence[Sequence[float]]) -> list[float]:
    """Minus each choice's rank when choices are compared position by position (0 = the best;
    equal rows keep their order). Log-probs equal to `GREEDY_TIE_DECIMALS` decimals tie: a
    token shared by two choices, scored in separate requests, differs only by float noise."""
    max_len = max(len(lps) for lps in logprobs)
    padded = [list(lps) + [sum(lps) / len(lps)] * (max_len - len(lps)) for lps in logprobs]
    rows = [[round(x, GREEDY_TIE_DECIMALS) for x in row] for row in padded]
    order = sorted(range(len(rows)), key=lambda i: [-x for x in rows[i]])  # stable
    ranks = [0.0] * len(rows)
    for rank, i in enumerate(order):
        ranks[i] = -float(rank)
    return ranks
