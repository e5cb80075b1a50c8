"""The three `select` scoring methods on given log-probs (the protocol's one definition)."""

from __future__ import annotations

import pytest

from sgl_lang.protocol import choice_scores
from sgl_lang.protocol.scoring import greedy_ranks

TEXTS = ["a", "b", "c"]
LOGPROBS = [[-1.0], [-0.5, -3.0], [-0.5, -1.0, -1.0]]


def best(method: str, unconditional: list[list[float]] | None = None) -> str:
    scores = choice_scores(method, LOGPROBS, unconditional)
    return TEXTS[max(range(len(TEXTS)), key=scores.__getitem__)]


def test_normalized_is_the_mean_logprob() -> None:
    scores = choice_scores("normalized", LOGPROBS)
    assert scores == pytest.approx([-1.0, -1.75, -2.5 / 3])
    assert best("normalized") == "c"


def test_greedy_compares_token_by_token_padding_with_the_mean() -> None:
    # position 0: b and c tie at -0.5; position 1: c (-1.0) beats b (-3.0)
    assert greedy_ranks(LOGPROBS) == [-2.0, -1.0, 0.0]
    assert best("greedy") == "c"
    # a short choice is padded with its mean: [-1, -1] vs [-1, -2]
    assert greedy_ranks([[-1.0], [-1.0, -2.0]]) == [0.0, -1.0]
    assert greedy_ranks([[-1.0], [-1.0]]) == [0.0, -1.0]  # a tie keeps the first


def test_unconditional_subtracts_the_prior() -> None:
    prior = [[-0.1], [-0.5, -0.5], [-3.0, -3.0, -3.0]]
    scores = choice_scores("unconditional", LOGPROBS, prior)
    assert scores == pytest.approx([-0.9, -1.25, 2.5 - 1 / 3])
    # the prior may be tokenized differently: the means are subtracted
    assert choice_scores("unconditional", [[-1.0, -3.0]], [[-1.0]]) == pytest.approx([-1.0])
    with pytest.raises(ValueError, match="unconditional"):
        choice_scores("unconditional", LOGPROBS)
    with pytest.raises(ValueError, match="method"):
        choice_scores("mean", LOGPROBS)
    with pytest.raises(ValueError, match="at least one token"):
        choice_scores("normalized", [[-1.0], []])
