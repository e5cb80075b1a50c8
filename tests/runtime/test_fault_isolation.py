"""Fault isolation: a request whose ids, constraint, sampling or step fails fails alone; the
engine keeps serving the others with the same outputs, and no slot or lock is left behind."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from conftest import assert_idle_and_leak_free, greedy, run_all, token_ids

from sgl_lang.runtime.constrained import ConstraintSpec
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.model_runner import ForwardBatch
from sgl_lang.runtime.request import FinishReason, RequestError
from sgl_lang.runtime.sampling import SamplingParams

PAGE_SIZES = (1, 32)  # every engine test runs with pages of 1 and of 32 slots

POISON_ID = 49_100  # a real token that `token_ids` never draws: the injected forward fails on it
HOSTILE_REGEX = "a{1000000}"  # llguidance's lexer gives up on it at the first output token
SELF_REF_SCHEMA = {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}
REQUIRES_ITSELF = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}


def poison_forward(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every forward that computes POISON_ID raise, as a model bug would."""
    real_run = engine.runner.run

    def run(forward: ForwardBatch) -> torch.Tensor:
        if bool((forward.input_ids == POISON_ID).any()):
            raise RuntimeError("injected forward failure")
        return real_run(forward)

    monkeypatch.setattr(engine.runner, "run", run)


async def generate(engine: Engine, prompt: Any, params: SamplingParams) -> str:
    return "".join([chunk.text async for chunk in engine.generate(prompt, params)])


async def outcomes(
    engine: Engine, jobs: Sequence[tuple[Any, SamplingParams]]
) -> list[str | BaseException]:
    """Run every job concurrently: each one's text, or what it raised."""
    return await asyncio.gather(
        *(generate(engine, p, sp) for p, sp in jobs), return_exceptions=True
    )


def assert_serving_and_clean(engine: Engine) -> None:
    """The engine still serves, runs nothing, and a flush frees every slot."""
    assert engine.health().serving
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting) == (0, 0)
    engine.loop.call(engine.check_integrity)
    engine.flush_cache()
    allocator = engine.kv_pool.allocator
    assert allocator.num_free_pages == allocator.num_pages


@pytest.mark.parametrize("ids", [[-1], [5, 49_152], [7, 10**9, 8]])
def test_ids_outside_the_vocabulary_fail_that_request_alone(make_engine: Any, ids: list) -> None:
    engine = make_engine(threaded=True)
    prompt = token_ids(1, 12)

    async def main() -> tuple[list[str | BaseException], str]:
        return await outcomes(engine, [(ids, greedy(4))]), await generate(engine, prompt, greedy(4))

    (bad,), good = asyncio.run(main())
    assert isinstance(bad, ValueError)
    bad_id = next(i for i in ids if not 0 <= i < 49_152)
    assert f"token id {bad_id} (prompt position {ids.index(bad_id)}) is not in the vocabulary" in (
        str(bad)
    )
    assert good == run_all(make_engine(), [prompt], greedy(4))[0].text
    assert_serving_and_clean(engine)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (ConstraintSpec.regex(HOSTILE_REGEX), RequestError, "too many expressions"),
        (ConstraintSpec.json(SELF_REF_SCHEMA), ValueError, "no output can start to match it"),
        (ConstraintSpec.json(REQUIRES_ITSELF), RequestError, "Too many items"),
    ],
    ids=["hostile-regex", "schema-only-refers-to-itself", "schema-requires-itself"],
)
def test_a_constraint_that_fails_fails_that_request_alone(
    make_engine: Any, spec: ConstraintSpec, error: type, message: str
) -> None:
    engine = make_engine(threaded=True)
    prompt = token_ids(2, 12)

    async def main() -> list[str | BaseException]:
        return await outcomes(
            engine, [(prompt, greedy(4)), (token_ids(3, 9), greedy(8, constraint=spec))]
        )

    text, failed = asyncio.run(main())
    assert isinstance(failed, error) and message in str(failed), failed
    assert "<non-verbose/>" not in str(failed)
    assert text == run_all(make_engine(), [prompt], greedy(4))[0].text
    assert asyncio.run(generate(engine, prompt, greedy(4))) == text  # and it goes on serving
    assert_serving_and_clean(engine)


def test_a_forward_that_raises_fails_only_the_request_it_raises_for(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poisoned prompt is batched with the others: the batch runs again request by request,
    and only the poisoned one fails; the cache stays consistent after every step."""
    prompts = [token_ids(10 + i, 20 + 7 * i) for i in range(4)]
    expected = run_all(make_engine(), prompts, greedy(6))
    engine = make_engine()
    poison_forward(engine, monkeypatch)
    poisoned = [*token_ids(9, 15), POISON_ID, *token_ids(8, 5)]
    done = run_all(engine, [prompts[0], poisoned, *prompts[1:]], greedy(6))
    assert done[1].meta.finish_reason is FinishReason.ERROR
    assert done[1].meta.error == "internal error in an engine step: injected forward failure"
    assert [c.text for c in done[:1] + done[2:]] == [c.text for c in expected]
    assert engine.stats().num_failed_steps == 1
    assert_idle_and_leak_free(engine)


def test_a_failed_decode_step_frees_its_slots(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward that raises mid-decode: its slots (not computed) go back to the free list."""
    engine = make_engine()
    real_run = engine.runner.run
    num_calls = 0

    def run(forward: ForwardBatch) -> torch.Tensor:
        nonlocal num_calls
        num_calls += 1
        if num_calls == 3:  # the second decode step
            raise RuntimeError("injected decode failure")
        return real_run(forward)

    monkeypatch.setattr(engine.runner, "run", run)
    (done,) = run_all(engine, [token_ids(20, 30)], greedy(8))
    assert done.meta.finish_reason is FinishReason.ERROR
    assert done.meta.completion_tokens == 2 and "injected decode failure" in done.meta.error
    assert_idle_and_leak_free(engine)


def broken_processor(logits: torch.Tensor, output_ids: Sequence[int]) -> torch.Tensor:
    """A logits processor with a bug that shows at the third output token."""
    if len(output_ids) == 2:
        raise RuntimeError("processor bug")
    return logits


def test_a_failure_while_sampling_fails_that_request_alone(make_engine: Any) -> None:
    prompts = [token_ids(30, 12), token_ids(31, 17)]
    expected = run_all(make_engine(), prompts, greedy(5))
    engine = make_engine()
    broken_params = SamplingParams(
        max_new_tokens=5, temperature=0.0, logits_processor=broken_processor
    )
    done = run_all(engine, [prompts[0], token_ids(32, 9), prompts[1]], [
        greedy(5), broken_params, greedy(5)
    ])  # fmt: skip
    assert done[1].meta.finish_reason is FinishReason.ERROR
    assert done[1].meta.error == "processor bug" and done[1].meta.completion_tokens == 2
    assert [done[0].text, done[2].text] == [c.text for c in expected]
    assert_idle_and_leak_free(engine)


def test_a_failure_it_cannot_recover_from_stops_the_engine_and_reports_it(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the cache is not consistent after a failed step, the engine stops: every request
    fails, none stays 'running', and health() says why."""
    from sgl_lang.runtime.cache_integrity import IntegrityError

    engine = make_engine(threaded=True)
    assert engine.health().serving

    def broken() -> None:
        raise IntegrityError("page 3 is owned by nobody (leaked)")

    monkeypatch.setattr(engine, "check_integrity", broken)
    poison_forward(engine, monkeypatch)
    with pytest.raises(RequestError, match="injected forward failure"):
        asyncio.run(generate(engine, [POISON_ID, *token_ids(40, 5)], greedy(4)))
    engine.loop.close()  # waits for the loop's thread: it stopped already
    health = engine.health()
    assert not health.serving and "stopped after an internal error" in (health.error or "")
    assert (engine.stats().num_running, engine.stats().num_waiting) == (0, 0)
    with pytest.raises(RuntimeError, match="engine stopped"):
        engine.submit(token_ids(41, 5), greedy(4))


def test_a_closed_engine_reports_it_cannot_serve(make_engine: Any) -> None:
    engine = make_engine(threaded=True)
    engine.close()
    assert engine.health() == (False, "the engine is closed")


def test_one_hundred_requests_ten_poisoned(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The issue's fault injection: 100 concurrent requests, 10 poisoned (ids outside the
    vocabulary, hostile constraints, a sampling bug, a forward that raises); the 90 others finish with the same
    outputs as when they run without the poisoned ones, and nothing leaks."""
    good: list[tuple[Any, SamplingParams]] = []
    for i in range(90):
        prompt = token_ids(100 + i, 8 + (i * 7) % 40)
        if i % 3 == 0:
            params = SamplingParams(max_new_tokens=8, temperature=0.8, seed=i)
        elif i % 10 == 1:
            params = greedy(8, constraint=ConstraintSpec.regex("[a-z]+( [a-z]+)*"))
        else:
            params = greedy(4 + i % 9)
        good.append((prompt, params))
    poisoned: list[tuple[Any, SamplingParams]] = [
        ([-1], greedy(4)),
        ([*token_ids(1, 6), 49_152], greedy(4)),
        ([*token_ids(2, 6), 2**40], greedy(4)),
        (token_ids(3, 10), greedy(8, constraint=ConstraintSpec.regex(HOSTILE_REGEX))),
        (token_ids(4, 10), greedy(8, constraint=ConstraintSpec.json(SELF_REF_SCHEMA))),
        (token_ids(5, 10), greedy(8, constraint=ConstraintSpec.json(REQUIRES_ITSELF))),
        (token_ids(6, 10), SamplingParams(max_new_tokens=8, logits_processor=broken_processor)),
        ([*token_ids(7, 30), POISON_ID], greedy(4)),
        ([POISON_ID, *token_ids(8, 12)], greedy(4)),
        ([*token_ids(9, 3), POISON_ID, *token_ids(10, 40)], greedy(4)),
    ]
    baseline = asyncio.run(outcomes(make_engine(threaded=True), good))
    assert all(isinstance(text, str) for text in baseline)

    engine = make_engine(threaded=True)
    poison_forward(engine, monkeypatch)
    jobs = good[:45] + poisoned + good[45:]  # poisoned in the middle of the stream
    results = asyncio.run(outcomes(engine, jobs))
    survived = results[:45] + results[55:]
    failed = results[45:55]
    assert survived == baseline
    assert all(isinstance(f, ValueError | RequestError) for f in failed), failed
    assert engine.stats().num_failed_steps >= 3  # one per forward-poisoned request
    assert_serving_and_clean(engine)
    with capsys.disabled():
        print(f"\nfault injection: {len(jobs)} requests, {len(poisoned)} poisoned, "
              f"{sum(isinstance(s, str) for s in survived)} survived with baseline outputs, "
              f"{sum(isinstance(f, BaseException) for f in failed)} failed alone, "
              f"{engine.stats().num_failed_steps} failed steps, integrity clean, 0 slots leaked")  # fmt: skip


def test_a_compile_past_its_time_limit_fails_that_request_and_blocks_nothing(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compile runs on a worker thread: while it hangs, the event loop and the engine serve
    other requests; past `grammar_compile_timeout` the request fails with a plain message."""
    engine = make_engine(threaded=True, grammar_compile_timeout=0.2)
    release = threading.Event()
    real_get = engine.constraints.get

    def hanging_get(spec: ConstraintSpec) -> Any:
        if spec.source == "hangs":
            release.wait(timeout=30)  # bounded, should it run on the event loop
        return real_get(spec)

    monkeypatch.setattr(engine.constraints, "get", hanging_get)
    prompt = token_ids(50, 10)

    async def main() -> list[str | BaseException]:
        hanging = greedy(4, constraint=ConstraintSpec.regex("hangs"))
        done = await outcomes(engine, [(prompt, hanging), (prompt, greedy(4))])
        release.set()  # asyncio.run waits for its worker threads at the end
        return done

    failed, text = asyncio.run(main())
    assert isinstance(failed, ValueError)
    assert str(failed) == "the regex constraint took longer than 0.2 s to compile"
    assert text == run_all(make_engine(), [prompt], greedy(4))[0].text
    assert_serving_and_clean(engine)
