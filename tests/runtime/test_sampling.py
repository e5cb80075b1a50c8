"""Sampler: greedy, temperature, top-k/top-p/min-p, penalties, seeds, the logits-mask hook and
the reported log-probs; the whole batch sampled at once gives each row what it gets alone; and
seeded sampling that does not depend on the batch it runs in."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import run_all, token_ids

from sgl_lang.runtime.sampling import Sampler, SamplingParams, apply_penalties, sampling_weights

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


@pytest.mark.parametrize("mixed", [False, True])
def test_greedy_ties_go_to_the_first_largest_token(mixed: bool) -> None:
    """As argmax: a tie picks the lowest token id, whether every row is greedy (the whole-batch
    path) or some sample (the greedy rows' own path)."""
    logits = torch.zeros(3, 49152)
    logits[0, [5, 9, 40000]] = 2.0
    logits[1, [30000, 7]] = 1.0
    greedy = SamplingParams(temperature=0.0)
    params = [greedy, greedy, SamplingParams(seed=1) if mixed else greedy]
    result = Sampler().sample(logits, params, [[]] * 3, [None] * 3)
    assert result.token_ids[:2].tolist() == [5, 7]
    if not mixed:
        assert int(result.token_ids[2]) == 0


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


def test_sampling_weights_filter_each_row_by_its_own_params() -> None:
    rows = [SamplingParams(top_k=2), SamplingParams(), SamplingParams(top_p=0.5, temperature=0.5)]
    weights = sampling_weights(LOGITS.repeat(3, 1), rows)
    assert torch.allclose(weights[0], torch.tensor([0.0, 0.5, 0.0, 0.3]))
    assert torch.allclose(weights[1], PROBS)
    assert weights[2].nonzero().flatten().tolist() == [1]


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


def test_draws_follow_the_weights() -> None:
    torch.manual_seed(0)
    weights = PROBS.repeat(4000, 1) * 3  # unnormalised, as `sampling_weights` leaves them
    drawn = Sampler().sample(weights.log(), [SamplingParams()] * 4000, [[]] * 4000, [None] * 4000)
    shares = torch.bincount(drawn.token_ids, minlength=4) / 4000
    assert torch.allclose(shares, PROBS, atol=0.03)


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
    unseeded = run_all(make_engine(), prompts[:1] * 4, SamplingParams(max_new_tokens=8))
    # no seed: independent draws (the tiny model is peaked, so two rows may agree by chance)
    assert len({c.meta.output_ids for c in unseeded}) > 1


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


# The batch at once: each row gets what it would get alone (greedy rows the same argmax, seeded
# rows the same draws), whatever the other rows ask for.

BATCH_PARAMS = [
    SamplingParams(temperature=0.0),
    SamplingParams(seed=1, top_p=0.9),
    SamplingParams(seed=2, temperature=0.7, top_k=50),
    SamplingParams(temperature=0.0, presence_penalty=1.5),
    SamplingParams(seed=3, min_p=0.05, logits_mask=lambda ids: torch.arange(49152) % 3 == 0),
    SamplingParams(seed=4),
    SamplingParams(top_k=1),
]


def test_a_batch_samples_each_row_as_it_would_alone() -> None:
    logits = torch.randn(len(BATCH_PARAMS), 49152, generator=torch.Generator().manual_seed(0)) * 4
    output_ids = [[5, 9, 9]] * len(BATCH_PARAMS)

    def generators() -> list[torch.Generator | None]:
        return [
            None if p.seed is None else torch.Generator().manual_seed(p.seed) for p in BATCH_PARAMS
        ]

    for _ in range(5):
        batch_gens, alone_gens = generators(), generators()
        together = Sampler().sample(logits, BATCH_PARAMS, output_ids, batch_gens)
        alone = [
            Sampler().sample(logits[row : row + 1], [p], output_ids[:1], [alone_gens[row]])
            for row, p in enumerate(BATCH_PARAMS)
        ]
        assert together.token_ids.tolist() == [int(a.token_ids[0]) for a in alone]
        assert torch.equal(together.logprobs, torch.cat([a.logprobs for a in alone]))
        greedy_rows = [0, 6]
        assert together.token_ids[greedy_rows].tolist() == logits[greedy_rows].argmax(-1).tolist()
        assert int(together.token_ids[4]) % 3 == 0
        logits = logits.roll(1000, dims=-1)


def test_a_failing_row_fails_alone_in_a_batch() -> None:
    def nothing(ids: Any) -> torch.Tensor:
        return torch.zeros(4, dtype=torch.bool)

    params = [SamplingParams(temperature=0.0), SamplingParams(logits_mask=nothing)]
    params.append(SamplingParams(temperature=0.0, logits_mask=lambda ids: torch.arange(4) != 1))
    result = Sampler().sample(LOGITS.repeat(3, 1), params, [[]] * 3, [None] * 3, row_errors=True)
    assert result.token_ids.tolist()[::2] == [1, 3]
    assert result.errors[0] is None and isinstance(result.errors[1], ValueError)


def test_unfiltered_weights_are_the_softmax_the_filtered_path_keeps() -> None:
    """Temperature only skips the sort, yet gives the very floats of the filtered path with
    every token kept, so a seeded request draws the same tokens either way."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 49152, generator=gen) * (1 + torch.arange(20)[:, None] % 5)
    logits[:, :100] = logits[:, :1]  # ties
    plain = sampling_weights(logits, [SamplingParams()] * 20)
    kept_all = sampling_weights(logits, [SamplingParams(min_p=1e-30)] * 20)
    nonzero = kept_all > 0
    assert torch.equal(plain[nonzero], kept_all[nonzero])
    assert torch.equal(plain, torch.softmax(logits, dim=-1))
