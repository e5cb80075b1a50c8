"""Jump-forward: a token the constraint forces (the only one allowed) is appended without a
decode step, and greedy output stays the same token for token on every constrained example
(the real model's examples: test_constrained.py)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import greedy, run_all
from test_constrained import ENGINES, EOS, INT, PERSON, TINY_SPECS

from sgl_lang.runtime.constrained import ConstraintCache, ConstraintSpec
from sgl_lang.runtime.engine import Engine

EXAMPLES = {
    **TINY_SPECS,  # regex (date, alternation), choices, a flat JSON object
    "int": ConstraintSpec.regex(INT),
    "nested json": ConstraintSpec.json(PERSON),
    "forced tail": ConstraintSpec.regex(r"[0-9]{2}:[0-9]{2} UTC"),
}


@pytest.mark.parametrize("engine_name", ENGINES)
def test_the_forced_token_is_the_only_one_allowed(tokenizer: Any, engine_name: str) -> None:
    constraints = ConstraintCache(tokenizer, len(tokenizer), (EOS,), engine=engine_name)
    [one, two, comma] = (tokenizer.encode(t, add_special_tokens=False)[0] for t in "12,")
    tc = constraints.get(ConstraintSpec.regex("[0-9]{2},")).start()
    assert tc.forced_token() is None  # ten digits are allowed
    tc.advance(one)
    tc.advance(two)
    assert tc.forced_token() == comma and not tc.is_accepting
    tc.advance(comma)
    assert tc.is_finished and tc.forced_token() is None  # EOS only: the request just ends


def outputs(engine: Engine, prompts: list[str], specs: list[ConstraintSpec], **fields: Any):
    return [
        r.meta.output_ids
        for r in run_all(engine, prompts, [greedy(60, constraint=s, **fields) for s in specs])
    ]


@pytest.mark.parametrize("engine_name", ENGINES)
def test_jump_forward_keeps_greedy_outputs_and_saves_steps(make_engine, engine_name) -> None:
    specs = list(EXAMPLES.values())
    prompts = [f"Example {i}:" for i in range(len(specs))]
    on = make_engine(grammar_engine=engine_name)
    off = make_engine(grammar_engine=engine_name, jump_forward=False)
    # one batch: requests extended by forced tokens decode along with 1-token ones
    assert outputs(on, prompts, specs) == outputs(off, prompts, specs)
    on_stats, off_stats = on.stats(), off.stats()
    assert on_stats.num_forced_tokens > 0 and off_stats.num_forced_tokens == 0
    assert off_stats.num_decode_tokens - on_stats.num_decode_tokens == on_stats.num_forced_tokens
    assert on_stats.num_decode_steps < off_stats.num_decode_steps


def test_requests_with_logprobs_decode_every_token(make_engine) -> None:
    engine = make_engine()
    outputs(engine, ["x"], [EXAMPLES["forced tail"]], return_logprobs=True)
    assert engine.stats().num_forced_tokens == 0  # a forced token has no log-prob of its own
