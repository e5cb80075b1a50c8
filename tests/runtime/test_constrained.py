"""Constrained decoding: the token masks on the real tokenizer, the engine wiring on the tiny
random model (its choices are arbitrary, so only the mask makes them valid), and valid output
from the real SmolLM2."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from typing import Any

import pytest
import torch
from conftest import greedy, run_all

from sgl_lang.runtime.config import EngineConfig
from sgl_lang.runtime.constrained import ConstraintCache, ConstraintSpec, ascii_digits
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.request import FinishReason
from sgl_lang.runtime.sampling import SamplingParams

EOS = 2
HAS_XGRAMMAR = importlib.util.find_spec("xgrammar") is not None
INT = r"-?(0|[1-9][0-9]*)"
DATE = r"\d{4}-\d{2}-\d{2}"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"zip": {"type": "integer"}, "city": {"enum": ["Paris", "Rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "note": {"type": "string", "maxLength": 5},  # optional
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}


def check_person(value: Any) -> None:
    """PERSON's rules, checked by hand (no jsonschema in the venv)."""
    assert set(value) - {"note"} == {"name", "age", "role", "tags", "address"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert type(value["age"]) is int and 0 <= value["age"] <= 120
    assert value["role"] in ("admin", "user", "guest")
    assert len(value["tags"]) <= 3 and all(type(t) is bool for t in value["tags"])
    address = value["address"]
    assert set(address) <= {"zip", "city"} and address["city"] in ("Paris", "Rome")
    assert type(address.get("zip", 0)) is int
    assert len(value.get("note", "")) <= 5


@pytest.fixture(scope="module")
def constraints(tokenizer: Any) -> ConstraintCache:
    return ConstraintCache(tokenizer, len(tokenizer), (EOS,))


def walk(constraints: ConstraintCache, spec: ConstraintSpec, text: str, tokenizer: Any) -> list:
    """Feed `text`'s tokens through a fresh matcher; per step (token allowed, EOS allowed)."""
    tc = constraints.get(spec).start()
    ids, steps = tokenizer.encode(text, add_special_tokens=False), []
    for i, token_id in enumerate(ids):
        allowed = tc.allowed_tokens(ids[:i])
        steps.append((bool(allowed[token_id]), bool(allowed[EOS])))
        tc.advance(token_id)
    return [*steps, tc.is_finished]


# -- the constraint object on the tokenizer alone ----------------------------------------------


def test_eos_is_allowed_only_once_the_output_is_a_complete_match(constraints, tokenizer) -> None:
    *steps, finished = walk(constraints, ConstraintSpec.regex("[0-9]{3}"), "123", tokenizer)
    assert all(ok and not eos for ok, eos in steps) and finished
    tc = constraints.get(ConstraintSpec.regex("[0-9]+")).start()
    assert not tc.allowed_tokens([])[EOS]
    tc.advance(tokenizer.encode("7", add_special_tokens=False)[0])
    assert tc.allowed_tokens([0])[EOS] and tc.is_accepting and not tc.is_finished


def test_a_choice_that_prefixes_another_may_end_or_go_on(constraints, tokenizer) -> None:
    spec = ConstraintSpec.choices(["no", "none", 'say "hi"'])
    assert walk(constraints, spec, 'say "hi"', tokenizer)[-1] is True
    tc = constraints.get(spec).start()
    tc.advance(tokenizer.encode("no", add_special_tokens=False)[0])
    allowed = tc.allowed_tokens([0])
    assert allowed[EOS] and allowed[tokenizer.encode("ne", add_special_tokens=False)[0]]
    assert not allowed[tokenizer.encode("x", add_special_tokens=False)[0]]


@pytest.mark.parametrize("end_on_exit", [True, False])
def test_a_complete_match_ends_where_the_model_would_leave_the_grammar(
    constraints: ConstraintCache, tokenizer: Any, end_on_exit: bool
) -> None:
    seven, space_days = (tokenizer.encode(t, add_special_tokens=False)[0] for t in ("7", " days"))
    tc = constraints.get(ConstraintSpec.regex("[0-9]+")).start(end_on_exit=end_on_exit)
    tc.advance(seven)
    logits = torch.zeros(len(tokenizer))
    logits[[space_days, seven]] = torch.tensor([5.0, 4.0])  # the model wants to leave
    allowed = tc.process_logits(logits, [seven]).isfinite()
    assert allowed[EOS] and bool(allowed[seven]) is not end_on_exit  # ends, or plain masking
    logits[seven] = 6.0  # the model wants another digit: masking as usual
    assert tc.process_logits(logits, [seven]).isfinite().sum() > 10


def test_digits_are_ascii(constraints, tokenizer) -> None:
    allowed = constraints.get(ConstraintSpec.regex(r"\d")).start().allowed_tokens([])
    texts = {tokenizer.decode([i]) for i in allowed.nonzero()[:, 0].tolist()}
    assert texts == set("0123456789")
    assert ascii_digits(r"a\d[\d.]\D[]\d]\\d") == r"a[0-9][0-9.][^0-9][]0-9]\\d"


def test_specs_compile_once_and_requests_keep_their_own_state(constraints, tokenizer) -> None:
    spec = ConstraintSpec.json({"type": "integer"})
    assert constraints.get(spec) is constraints.get(ConstraintSpec.json('{"type": "integer"}'))
    first, second = constraints.get(spec).start(), constraints.get(spec).start()
    first.advance(tokenizer.encode("4", add_special_tokens=False)[0])
    assert first.is_accepting and not second.is_accepting and first.num_masks == 1
    first.allowed_tokens([0])
    assert first.num_masks == 1  # a state's mask is computed once


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ConstraintSpec.regex("(unclosed"), "invalid regex constraint: at 1(8): invalid regex"),
        (ConstraintSpec.regex("(?=x)a"), "invalid regex constraint: at 1(8): invalid regex"),
        (ConstraintSpec.json({"type": "foo"}), "invalid json constraint: Invalid type: foo"),
    ],
)
def test_a_spec_that_does_not_compile_names_its_problem(constraints, spec, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        constraints.get(spec)


def test_bad_specs_and_params_are_refused() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        ConstraintSpec("ebnf", "root ::= x")
    with pytest.raises(ValueError, match="non-empty strings"):
        ConstraintSpec.choices(["a", ""])
    with pytest.raises(ValueError, match="cannot be combined with ignore_eos or logits_proc"):
        SamplingParams(constraint=ConstraintSpec.regex("a"), ignore_eos=True)
    with pytest.raises(ValueError, match="must be a ConstraintSpec"):
        SamplingParams(constraint=("regex", "a"))  # type: ignore[arg-type]


# -- the engine on the tiny random model --------------------------------------------------------

TINY_SPECS = {
    "date": ConstraintSpec.regex(DATE),
    "alternation": ConstraintSpec.regex("(red|green|blue)-(cat|dog)"),
    "choices": ConstraintSpec.choices(["alpha", "beta", "gamma delta"]),
    "json": ConstraintSpec.json(
        {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}, "kind": {"enum": ["a", "b"]}},
            "required": ["ok", "kind"],
            "additionalProperties": False,
        }
    ),
}


def check_output(spec: ConstraintSpec, text: str) -> None:
    if spec.kind == "regex":
        assert re.fullmatch(spec.source, text), (spec.source, text)
    elif spec.kind == "choices":
        assert text in json.loads(spec.source)
    else:
        value = json.loads(text)
        assert set(value) == {"ok", "kind"} and type(value["ok"]) is bool, text


def test_mixed_batch_each_request_with_its_own_matcher(make_engine: Any) -> None:
    engine = make_engine()
    prompts = ["Give me the answer:", "Once upon a time", "The data:", "Choose:", "Hello"]
    free = greedy(12)
    params = [greedy(40, constraint=spec) for spec in TINY_SPECS.values()] + [free]
    results = run_all(engine, prompts, params)
    for spec, result in zip(TINY_SPECS.values(), results, strict=False):
        check_output(spec, result.text)
        assert result.meta.finish_reason is FinishReason.STOP
    alone = run_all(make_engine(), prompts[-1:], free)[0]
    assert results[-1].meta.output_ids == alone.meta.output_ids  # unconstrained: unaffected
    again = run_all(engine, prompts, params)
    assert [r.text for r in again] == [r.text for r in results]  # greedy: deterministic


def test_a_grammar_cut_by_max_new_tokens_ends_with_length(make_engine: Any) -> None:
    [result] = run_all(
        make_engine(), ["x"], greedy(3, constraint=ConstraintSpec.regex("[a-z]{40}"))
    )
    assert result.meta.finish_reason is FinishReason.LENGTH and len(result.meta.output_ids) == 3
    assert re.fullmatch("[a-z]+", result.text)


def test_stop_strings_still_cut_a_constrained_output(make_engine: Any) -> None:
    spec = ConstraintSpec.regex("a-b-c-d")
    [result] = run_all(make_engine(), ["x"], greedy(20, constraint=spec, stop=("-c",)))
    assert result.text == "a-b" and result.meta.finish_reason is FinishReason.STOP


def test_sampled_constrained_output_matches_too(make_engine: Any) -> None:
    spec = TINY_SPECS["date"]  # a hot temperature: the tiny model's picks spread out
    params = [SamplingParams(40, temperature=20, seed=s, constraint=spec) for s in range(4)]
    results = run_all(make_engine(), ["Today is"] * 4, params)
    for result in results:
        check_output(spec, result.text)
    assert len({r.text for r in results}) > 1


def test_async_generate_streams_a_constrained_output_and_refuses_a_bad_one(make_engine) -> None:
    engine = make_engine(threaded=True)
    spec = TINY_SPECS["alternation"]

    async def main() -> str:
        chunks = [c async for c in engine.generate("Pick:", greedy(20, constraint=spec))]
        assert chunks[-1].meta is not None
        assert chunks[-1].meta.finish_reason is FinishReason.STOP
        with pytest.raises(ValueError, match="invalid regex constraint"):
            async for _ in engine.generate("x", greedy(4, constraint=ConstraintSpec.regex("("))):
                pass
        return "".join(c.text for c in chunks)

    check_output(spec, asyncio.run(main()))


# -- the real model -----------------------------------------------------------------------------

REAL_CASES = [
    ("How many legs does a spider have? Answer with a number.", ConstraintSpec.regex(INT)),
    ("On which date did the Apollo 11 land on the Moon?", ConstraintSpec.regex(DATE)),
    ("Is the sky blue? Answer yes or no.", ConstraintSpec.regex("(yes|no)")),
    ("What is the capital of France?", ConstraintSpec.choices(["Paris", "London", "Berlin"])),
    ("Describe an admin called Ann living in Paris as JSON.", ConstraintSpec.json(PERSON)),
]


@pytest.mark.model
def test_real_model_outputs_match_their_constraints_with_or_without_jump_forward(
    real_model: Any,
) -> None:
    prompts = [[{"role": "user", "content": q}] for q, _ in REAL_CASES]
    params = [greedy(80, constraint=spec) for _, spec in REAL_CASES] + [greedy(8)]
    outputs = {}
    for jump_forward in (True, False):
        engine = Engine(
            model=real_model, threaded=False, kv_cache_tokens=4096, jump_forward=jump_forward
        )
        results = run_all(engine, [*prompts, prompts[0]], params)
        outputs[jump_forward] = [r.meta.output_ids for r in results]
        if jump_forward:
            assert engine.stats().num_forced_tokens > 0
            texts = [r.text for r in results]
        engine.close()
        assert all(r.meta.finish_reason is FinishReason.STOP for r in results[:-1])
    for (_, spec), text in zip(REAL_CASES, texts, strict=False):
        if spec.kind == "regex":
            assert re.fullmatch(ascii_digits(spec.source), text), text
        elif spec.kind == "choices":
            assert text in json.loads(spec.source)
        else:
            check_person(json.loads(text))
    assert outputs[True] == outputs[False]  # jump-forward: the same tokens, fewer steps


# -- both grammar engines, and a prefix (token healing) ------------------------------------------

ENGINES = [
    "llguidance",
    pytest.param("xgrammar", marks=pytest.mark.skipif(not HAS_XGRAMMAR, reason="no xgrammar")),
]


@pytest.fixture(scope="module", params=ENGINES)
def any_constraints(request: pytest.FixtureRequest, tokenizer: Any) -> ConstraintCache:
    return ConstraintCache(tokenizer, len(tokenizer), (EOS,), engine=request.param)


def first_tokens(constraints: ConstraintCache, spec: ConstraintSpec, tokenizer: Any) -> set[str]:
    allowed = constraints.get(spec).start().allowed_tokens([])
    return {tokenizer.decode([i]) for i in allowed.nonzero()[:, 0].tolist()}


def test_every_engine_masks_each_kind_alike(any_constraints, tokenizer) -> None:
    assert walk(any_constraints, ConstraintSpec.regex("[0-9]{3}"), "123", tokenizer)[-1]
    *steps, finished = walk(any_constraints, TINY_SPECS["json"], '{"ok": true, "kind": "b"}',
                            tokenizer)  # fmt: skip
    assert all(ok for ok, _ in steps) and not any(eos for _, eos in steps) and finished
    assert first_tokens(any_constraints, ConstraintSpec.regex(r"\d"), tokenizer) == set(
        "0123456789"
    )
    choices = ConstraintSpec.choices(["no", "none", 'say "hi"'])
    assert walk(any_constraints, choices, 'say "hi"', tokenizer)[-1]
    with pytest.raises(ValueError, match="invalid regex constraint"):
        any_constraints.get(ConstraintSpec.regex("(unclosed"))


def test_a_prefix_comes_first_so_a_healed_space_can_join_the_next_word(any_constraints,
                                                                       tokenizer) -> None:  # fmt: skip
    spec = ConstraintSpec.choices(["Paris", "London"]).with_prefix(" ")
    assert spec != ConstraintSpec.choices(["Paris", "London"])  # its own cache entry
    tokens = first_tokens(any_constraints, spec, tokenizer)
    assert {" Paris", " London", " "} <= tokens and "Paris" not in tokens
    assert walk(any_constraints, spec, " Paris", tokenizer)[-1]
    healed = ConstraintSpec.regex("[a-z]+").with_prefix(" Fra")  # a word cut in the middle
    assert " France" in first_tokens(any_constraints, healed, tokenizer)
    assert walk(any_constraints, ConstraintSpec.json({"type": "string"}).with_prefix(" "),
                ' "FR"', tokenizer)[-1]  # fmt: skip


@pytest.mark.skipif(not HAS_XGRAMMAR, reason="no xgrammar")
def test_the_xgrammar_engine_runs_a_mixed_batch(make_engine: Any) -> None:
    engine = make_engine(grammar_engine="xgrammar")
    specs = list(TINY_SPECS.values())
    results = run_all(
        engine, ["Give me the answer:"] * len(specs), [greedy(40, constraint=s) for s in specs]
    )
    for spec, result in zip(specs, results, strict=True):
        check_output(spec, result.text)
        assert result.meta.finish_reason is FinishReason.STOP


def test_an_unknown_or_missing_grammar_engine_is_named(tokenizer) -> None:
    with pytest.raises(ValueError, match="grammar_engine: expected one of"):
        EngineConfig(grammar_engine="outlines")
    with pytest.raises(ValueError, match="unknown grammar engine 'outlines'"):
        ConstraintCache(tokenizer, len(tokenizer), (EOS,), engine="outlines").get(
            TINY_SPECS["date"]
        )
