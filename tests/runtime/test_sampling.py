"""Sampler: greedy, temperature, top-k/top-p/min-p, penalties, seeds, the logits-mask hook and
the reported log-probs; and seeded sampling that does not depend on the batch it runs in."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import run_all, token_ids

from sgl_lang.runtime.sampling import Sampler, SamplingParams, apply_penalties, filtered_probs

PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
LOGITS = PROBS.log()


def draw(params: SamplingParams, logits: torch.Tensor = LOGITS, num: int = 400) -> set[int]:
    """The tokens seen in `num` draws of one row."""
    gen = torch.Generator().manual_seed(0)
    sampler = Sampler()
    return {
        int(sampler.sample(logits[None], [params], [[]], [gen]).token_ids[0]) for _ in range(num)
    }


def test_greedy_takes_the_argmax_and_reports_model_logprobs() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]])
    greedy = SamplingParams(temperature=0.0)
    result = Sampler().sample(logits, [greedy, greedy], [[], []], [None, None])
    assert result.token_ids.tolist() == [1, 2]
    want = torch.log_softmax(logits, -1)[[0, 1], [1, 2]]
    assert torch.allclose(result.logprobs, want)
    assert SamplingParams(top_k=1).is_greedy


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        (SamplingParams(), {0, 1, 2, 3}),
        (SamplingParams(top_k=2), {1, 3}),
        (SamplingParams(top_p=0.5), {1}),  # 0.5 alone reaches the mass
        (SamplingParams(top_p=0.7), {1, 3}),  # the token crossing top_p is kept
        (SamplingParams(top_p=0.81), {1, 3, 2}),
        (SamplingParams(min_p=0.5), {1, 3}),  # >= 0.25
        (SamplingParams(min_p=0.2, top_k=3), {1, 3, 2}),
        (SamplingParams(temperature=0.01), {1}),
    ],
)
def test_truncation_filters_keep_exactly_the_expected_tokens(
    params: SamplingParams, allowed: set[int]
) -> None:
    assert draw(params) == allowed


def test_filtered_probs_renormalise() -> None:
    probs = filtered_probs(LOGITS, top_k=2, top_p=1.0, min_p=0.0)
    assert torch.allclose(probs, torch.tensor([0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]))


def test_temperature_flattens_the_distribution() -> None:
    gen = torch.Generator().manual_seed(1)
    hot = SamplingParams(temperature=100.0)
    seen = [
        int(Sampler().sample(LOGITS[None], [hot], [[]], [gen]).token_ids[0]) for _ in range(400)
    ]
    assert seen.count(0) > 60  # ~25 % at a very high temperature, 5 % at 1.0


def test_penalties_follow_openai() -> None:
    logits = torch.zeros(5)
    out = apply_penalties(logits, [1, 1, 3], frequency=0.5, presence=0.25)
    assert out.tolist() == [0.0, -1.25, 0.0, -0.75, 0.0]
    params = SamplingParams(temperature=0.0, presence_penalty=2.0)
    picked = Sampler().sample(torch.tensor([[1.0, 2.0, 0.5]]), [params], [[1]], [None])
    assert picked.token_ids.tolist() == [0]  # 2.0 - 2.0 < 1.0


def test_logits_mask_restricts_tokens_and_sees_the_output_so_far() -> None:
    seen: list[list[int]] = []

    def only_even(output_ids: Any) -> torch.Tensor:
        seen.append(list(output_ids))
        return torch.arange(4) % 2 == 0

    greedy = SamplingParams(temperature=0.0, logits_mask=only_even)
    result = Sampler().sample(LOGITS[None], [greedy], [[7, 8]], [None])
    assert result.token_ids.tolist() == [2] and seen == [[7, 8]]
    assert result.logprobs.item() == pytest.approx(math.log(0.15))  # the model's, unmasked
    assert draw(SamplingParams(logits_mask=only_even)) == {0, 2}
    none = SamplingParams(logits_mask=lambda ids: torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no token"):
        draw(none, num=1)


def test_a_seed_fixes_the_draws() -> None:
    def run(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [
            int(Sampler().sample(LOGITS[None], [SamplingParams()], [[]], [gen]).token_ids[0])
            for _ in range(30)
        ]

    assert run(3) == run(3) and run(3) != run(4)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_k", -1),
        ("min_p", 1.5),
        ("frequency_penalty", 3.0),
        ("presence_penalty", -2.5),
        ("stop", ("",)),
    ],
)
def test_params_reject_bad_values_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_params_normalise_stop_and_are_frozen() -> None:
    params = SamplingParams(stop="\n", stop_token_ids=[5])  # type: ignore[arg-type]
    assert params.stop == ("\n",) and params.stop_token_ids == (5,)
    with pytest.raises(AttributeError):
        params.temperature = 0.5  # type: ignore[misc]


def test_seeded_sampling_does_not_depend_on_the_batch(make_engine: Any) -> None:
    prompts = [token_ids(80 + i, 12 + i) for i in range(5)]
    params = [SamplingParams(max_new_tokens=8, seed=100 + i, top_p=0.9) for i in range(5)]
    alone = [
        run_all(make_engine(), [p], sp)[0].meta.output_ids
        for p, sp in zip(prompts, params, strict=True)
    ]
    together = run_all(make_engine(prefill_chunk_tokens=20), prompts, params)
    assert [c.meta.output_ids for c in together] == alone
    torch.manual_seed(0)
    unseeded = run_all(make_engine(), prompts[:1] * 2, SamplingParams(max_new_tokens=8))
    assert len({c.meta.output_ids for c in unseeded}) == 2  # no seed: independent draws


def test_the_engine_applies_a_logits_mask_per_request(make_engine: Any) -> None:
    allowed_ids = torch.tensor([300, 301, 302])

    def mask(output_ids: Any) -> torch.Tensor:
        allowed = torch.zeros(49152, dtype=torch.bool)
        allowed[allowed_ids[len(output_ids) % 3 :]] = True
        return allowed

    masked = SamplingParams(max_new_tokens=6, temperature=0.0, logits_mask=mask)
    plain = SamplingParams(max_new_tokens=6, temperature=0.0)
    completions = run_all(make_engine(), [token_ids(90, 10)] * 2, [masked, plain])
    out = completions[0].meta.output_ids
    assert all(t in allowed_ids[i % 3 :].tolist() for i, t in enumerate(out))
    assert not set(completions[1].meta.output_ids) <= set(allowed_ids.tolist())


# Temperature only: no sort over the vocabulary, yet the very floats of the filtered path, so
# a seeded request draws the same tokens as before.


def sorted_path(logits: torch.Tensor) -> torch.Tensor:
    """The filtered path of `filtered_probs` with every token kept (the reference)."""
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    filtered = torch.zeros_like(probs)
    filtered[order] = sorted_probs
    return filtered / filtered.sum()


def test_unfiltered_probs_are_bit_identical_to_the_sorted_path() -> None:
    gen = torch.Generator().manual_seed(0)
    for row in range(20):
        logits = torch.randn(49152, generator=gen) * (1 + row % 5) / (0.1 + row % 4)
        logits[: row * 10] = logits[0]  # ties
        probs = filtered_probs(logits, top_k=0, top_p=1.0, min_p=0.0)
        assert torch.equal(probs, sorted_path(logits))
        draws = [
            int(torch.multinomial(p, 1, generator=torch.Generator().manual_seed(row)))
            for p in (probs, sorted_path(logits))
        ]
        assert draws[0] == draws[1]
