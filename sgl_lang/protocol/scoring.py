"""The scores of `select`'s methods, from the log-probs of each choice's tokens: `normalized`,
`greedy` and `unconditional` (as SGLang's `choices_method`s). Engines and APIs supply the
log-probs; this is the one place that turns them into scores."""

from __future__ import annotations

from collections.abc import Sequence

SELECT_METHODS = ("normalized", "greedy", "unconditional")
GREEDY_TIE_DECIMALS = 4


def choice_scores(
    method: str,
    logprobs: Sequence[Sequence[float]],
    unconditional: Sequence[Sequence[float]] | None = None,
) -> list[float]:
    """One score per choice (higher = better; the first best is picked) by `method`:

    * `normalized`: the mean log-prob of the choice's tokens (token-length normalised);
    * `greedy`: compare choices token by token, keeping those with the best log-prob at each
      position (a shorter choice is padded with its mean); score = minus the choice's rank;
    * `unconditional`: the mean log-prob after the prefix minus the mean log-prob after a
      neutral prefix, which discounts choices that are likely whatever the question (the
      two may be tokenized differently, as by an API that scores the text twice).

    Raises ValueError for an unknown method, an empty choice, or `unconditional` without
    the neutral-prefix log-probs.
    """
    if method not in SELECT_METHODS:
        raise ValueError(f"unknown select method `{method}`: expected one of {_names()}")
    if not logprobs or not all(logprobs) or (unconditional and not all(unconditional)):
        raise ValueError("every choice needs at least one token")
    if method == "normalized":
        return [sum(lps) / len(lps) for lps in logprobs]
    if method == "greedy":
        return greedy_ranks(logprobs)
    if unconditional is None:
        raise ValueError("the unconditional method needs unconditional log-probs")
    return [
        sum(lps) / len(lps) - sum(ulps) / len(ulps)
        for lps, ulps in zip(logprobs, unconditional, strict=True)
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


def _names() -> str:
    return ", ".join(SELECT_METHODS)
