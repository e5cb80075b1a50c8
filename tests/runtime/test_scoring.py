"""The three `select` scoring methods on given log-probs."""

from __future__ import annotations

import pytest

from sgl_lang.runtime.scoring import choice_scores, greedy_ranks

TEXTS = ["a", "b", "c"]
IDS = [[1], [2, 3], [4, 5, 6]]
LOGPROBS = [[-1.0], [-0.5, -3.0], [-0.5, -1.0, -1.0]]


def best(method: str, unconditional: list[list[float]] | None = None) -> str:
    scores = choice_scores(method, TEXTS, IDS, LOGPROBS, unconditional)
    return max(scores, key=lambda s: s.score).text


def test_normalized_is_the_mean_logprob() -> None:
    scores = choice_scores("normalized", TEXTS, IDS, LOGPROBS)
    assert [s.score for s in scores] == pytest.approx([-1.0, -1.75, -2.5 / 3])
    assert best("normalized") == "c"
    assert scores[1].logprob_sum == -3.5 and scores[2].num_tokens == 3


def test_greedy_compares_token_by_token_padding_with_the_mean() -> None:
    # position 0: b and c tie at -0.5; position 1: c (-1.0) beats b (-3.0)
    assert greedy_ranks(LOGPROBS) == [-2.0, -1.0, 0.0]
    assert best("greedy") == "c"
    # a short choice is padded with its mean: [-1, -1] vs [-1, -2]
    assert greedy_ranks([[-1.0], [-1.0, -2.0]]) == [0.0, -1.0]
    assert greedy_ranks([[-1.0], [-1.0]]) == [0.0, -1.0]  # a tie keeps the first


def test_unconditional_subtracts_the_prior() -> None:
    prior = [[-0.1], [-0.5, -0.5], [-3.0, -3.0, -3.0]]
    scores = choice_scores("unconditional", TEXTS, IDS, LOGPROBS, prior)
    assert [s.score for s in scores] == pytest.approx([-0.9, -1.25, 2.5 - 1 / 3])
    assert scores[0].unconditional_logprobs == (-0.1,)
    with pytest.raises(ValueError, match="unconditional"):
        choice_scores("unconditional", TEXTS, IDS, LOGPROBS)
    with pytest.raises(ValueError, match="method"):
        choice_scores("mean", TEXTS, IDS, LOGPROBS)
